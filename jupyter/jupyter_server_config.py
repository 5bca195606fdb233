# The project's Jupyter server configuration, loaded by `make lab` (JUPYTER_CONFIG_PATH=jupyter).
# A user's own ~/.jupyter settings still win over these.
c = get_config()  # type: ignore[name-defined]  # noqa: F821

# Ploomber's server extension replaces the contents manager to inject cells; against jupyter_server 2.x's
# async contents manager every /api/contents request fails with HTTP 500 ("'coroutine' object is not
# subscriptable", ploomber 0.23.3 jupyter/manager.py), so the file browser opens nothing. It stays off: the
# notebooks run top to bottom with their parameters cell's defaults, which is how JupyterLab is used here.
c.ServerApp.jpserver_extensions = {"ploomber": False}

# Loopback only, no browser to open on a server, and root allowed: the project's machines run as root and
# the server binds loopback only.
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True
