"""The Kubernetes adapter: a small async API client on aiohttp.

- ``kubeconfig``: where the server is and which credentials to use (kubeconfig, in-cluster);
- ``auth``: credential providers (token, rotating token file, exec plugin, basic);
- ``discovery``: (apiVersion, kind) -> resource path and scope, cached, refreshed on a miss;
- ``errors``: HTTP answers -> ``TransientError`` / ``ConflictError`` / ``PermanentError``;
- ``client``: ``KubeClient`` with ``get``, ``list``, ``apply`` (server-side) and ``delete``.
"""

from .client import KubeClient
from .discovery import Discovery, Resource
from .kubeconfig import KubeConfig, load_config, load_in_cluster, load_kubeconfig

__all__ = ["Discovery", "KubeClient", "KubeConfig", "Resource", "load_config",
           "load_in_cluster", "load_kubeconfig"]
