"""The upstream test notebooks (nbval's and nbmake's) are data for test_upstream.py, not tests."""

collect_ignore = ["upstream"]
