"""Readers and writers for Caffe's file formats (prototxt text, caffemodel binary) and ours (HDF5)."""
import hashlib


def file_digest(path, algo="sha1") -> str:
    """Hex digest of a file read in 1 MiB chunks (weights files are hundreds of MB)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
