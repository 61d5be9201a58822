from .base import BACKENDS, Backend, BackendError, open_backend, resolve_backend, resolve_device

__all__ = ["BACKENDS", "Backend", "BackendError", "open_backend", "resolve_backend", "resolve_device"]
