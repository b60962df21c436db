from certifynet._version import __package_name__, __version__
