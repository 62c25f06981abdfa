"""kgen: TIPO / DanTagGen prompt upsampling engine.

The package uses relative imports only, so the WebUI extension can load it under a
private module name next to an installed ``tipo-kgen`` (whose import name is also ``kgen``).
"""

__version__ = "0.1.0"
