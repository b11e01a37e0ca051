"""Readers and writers for Caffe's file formats (prototxt text, caffemodel binary) and ours (HDF5)."""
