from .base import (BACKENDS, Backend, BackendError, BackendHandle, BackendSpec, Device, open_backend, resolve_backend,
                   resolve_device)

__all__ = ["BACKENDS", "Backend", "BackendError", "BackendHandle", "BackendSpec", "Device", "open_backend",
           "resolve_backend", "resolve_device"]
