"""WebUI glue that is no script: scripts/tipo.py loads this folder under a private name (like the vendored
``kgen``); the WebUI runs every file of ``scripts/`` as a script, never this folder's."""
