"""Scaling out over a Ray cluster: the Ray Serve application (ray_app.py, the only module that imports Ray), the
ingress's routing (ingress.py), the bridge that runs the server's app inside a replica (bridge.py) and the merged
metrics (metrics_merge.py). Above server.app in the layer contract."""
