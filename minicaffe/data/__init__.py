"""Data layers (HDF5Data, MemoryData, ImageData, Data, HDF5Output) and the DataTransformer.

Every module here is imported by the layer registry on first use, so each data layer registers
itself; :class:`~minicaffe.data.base.BaseDataLayer` holds the shared batching, shuffling,
prefetching and saved-position machinery.
"""
