"""The core: one ``Kernel`` per kernel process, the pool of warm kernels, results, errors,
argument checks and the wire contract. It imports no transport, backend, API or front end."""
