"""``python -m bridge.service > openapi.json``: the service's OpenAPI document, no server."""

from __future__ import annotations

import sys

from .dispatch import document
from .openapi import dumps

sys.stdout.write(dumps(document()))
