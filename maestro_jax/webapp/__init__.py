"""The local web app (`python -m maestro_jax.app`): requests.py (uploads and requests checked with
the `generate` command's own validation), queue.py (one job at a time, progress, cancel),
service.py (the config, one ModelPool, the app's folders), server.py (Starlette routes), static/
(the page: plain HTML, CSS and JavaScript, no build step, nothing fetched from a CDN)."""
