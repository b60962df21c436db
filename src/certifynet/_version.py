"""Single source of the package name and version (read by setup.py)."""
__package_name__ = "certifynet"
__version__ = "0.1.0"
