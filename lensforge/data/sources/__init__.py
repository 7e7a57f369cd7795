"""Data sources (registry kind ``data``): ``synthetic``, ``webdataset``, ``folder``.

Each is a map-style :class:`lensforge.interfaces.DataSource`: ``len()`` and
``get(index, size) -> Sample``; unreadable samples raise :class:`lensforge.interfaces.SampleError`.
Modules are imported lazily through the registry's entry points.
"""
