"""Kernels on this machine: jupyter_client's launch (kernel spec, MultiKernelManager), and the
watchdog process that ends them if the host dies."""
