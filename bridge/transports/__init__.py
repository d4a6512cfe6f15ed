"""Where kernels run: ``local`` (launched through jupyter_client on this machine) and
``gateway`` (Kernel Gateway / Enterprise Gateway). Each provides a ``Factory`` for the pool."""
