"""pycaffe's ``caffe.io``: image loading and resizing, the input ``Transformer``, 10-crop
oversampling, and conversions between arrays and Caffe's ``BlobProto`` / ``Datum`` messages.

The image helpers follow BVLC pycaffe exactly, because code ported from it expects the same
numbers: ``load_image`` gives an (H, W, 3) float image in [0, 1] in RGB order (scikit-image's
reader and ``img_as_float``; Pillow where scikit-image is absent), ``resize_image`` rescales the
image to [0, 1], resizes with scikit-image's ``resize`` (``order=1``, ``mode='constant'``) and
scales back, and ``Transformer.preprocess`` resizes to the net's input, transposes HWC -> CHW,
swaps channels (RGB -> BGR with ``(2, 1, 0)``), applies ``raw_scale``, subtracts the mean, then
applies ``input_scale``. The proto conversions import ``caffe_pb2`` (protobuf) when called. It
does not decode LMDB/LevelDB databases.
"""
from __future__ import annotations

import numpy as np

from ._mode import PycaffeError


def _pb2():
    from .proto import caffe_pb2
    return caffe_pb2


# ---------------------------------------------------------------------------------------------
# BlobProto / Datum


def blobproto_to_array(blob, return_diff=False):
    """BlobProto -> ndarray shaped by the legacy num/channels/height/width when any is set, else by
    ``shape.dim`` (no dims: a 0-d array, so several values without a shape are a ValueError)."""
    arr = np.array(blob.diff if return_diff else blob.data)
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        return arr.reshape(blob.num, blob.channels, blob.height, blob.width)
    dims = tuple(blob.shape.dim)
    if int(np.prod(dims)) != arr.size:
        raise ValueError(f"the BlobProto has {arr.size} values but its shape is {dims}")
    return arr.reshape(dims)


def array_to_blobproto(arr, diff=None):
    """ndarray (and an optional diff of the same shape) -> BlobProto with ``shape.dim``."""
    blob = _pb2().BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(np.asarray(arr, np.float64).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """[ndarray] -> serialised BlobProtoVector bytes."""
    vec = _pb2().BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(s):
    """serialised BlobProtoVector bytes -> [ndarray]."""
    vec = _pb2().BlobProtoVector()
    vec.ParseFromString(s)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """(C, H, W) array -> Datum: uint8 arrays as bytes in ``data``, others as ``float_data``."""
    if arr.ndim != 3:
        raise ValueError(f"a Datum holds a 3-D (C, H, W) array, got shape {arr.shape}")
    d = _pb2().Datum()
    d.channels, d.height, d.width = arr.shape
    if arr.dtype == np.uint8:
        d.data = arr.tobytes()
    else:
        d.float_data.extend(np.asarray(arr, np.float64).ravel().tolist())
    if label is not None:
        d.label = int(label)
    return d


def datum_to_array(datum):
    """Datum -> (C, H, W) array: uint8 from ``data`` bytes, float from ``float_data``."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data, dtype=float).reshape(shape)


# ---------------------------------------------------------------------------------------------
# images


def load_image(filename, color=True):
    """-> (H, W, 3) float32 in [0, 1], RGB ((H, W, 1) when ``color`` is False); alpha dropped."""
    try:
        import skimage.io
        from skimage import img_as_float
        img = img_as_float(skimage.io.imread(filename, as_gray=not color)).astype(np.float32)
    except ImportError:
        from PIL import Image
        with Image.open(filename) as im:
            im = im.convert("RGB" if color else "L")
            img = np.asarray(im, dtype=np.float32) / 255.0
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im, new_dims, interp_order=1):
    """im: (H, W, K) -> (new_dims[0], new_dims[1], K) float32.

    K = 1 or 3: scikit-image's ``resize`` on the image rescaled to [0, 1] (as pycaffe); other K:
    SciPy's ``zoom`` with spline order ``interp_order``. A constant image stays constant.
    """
    new_dims = tuple(int(d) for d in new_dims)
    if im.shape[-1] in (1, 3):
        lo, hi = float(im.min()), float(im.max())
        if hi > lo:
            try:
                from skimage.transform import resize
            except ImportError:
                raise ImportError("caffe.io.resize_image needs scikit-image: "
                                  "pip install 'minicaffe[pycaffe]'") from None
            std = (im - lo) / (hi - lo)
            out = resize(std, new_dims, order=interp_order, mode="constant") * (hi - lo) + lo
        else:
            out = np.full(new_dims + (im.shape[-1],), lo, dtype=np.float32)
    else:
        from scipy.ndimage import zoom
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        out = zoom(im, scale + (1,), order=interp_order)
    return out.astype(np.float32)


def oversample(images, crop_dims):
    """images: (N, H, W, K) (or a list of (H, W, K)) -> (10 N, ch, cw, K): per image the four corner
    crops and the centre crop, then the same five mirrored left-right (pycaffe's order)."""
    h, w = int(images[0].shape[0]), int(images[0].shape[1])
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    # the centre window starts at int(h/2 - ch/2): truncation, as pycaffe's int cast
    cy, cx = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
    starts = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (cy, cx)]
    k = images[0].shape[-1]
    out = np.empty((10 * len(images), ch, cw, k), dtype=np.float32)
    i = 0
    for im in images:
        for y, x in starts:
            out[i] = im[y:y + ch, x:x + cw, :]
            i += 1
        out[i:i + 5] = out[i - 5:i, :, ::-1, :]  # mirrors: flip the W axis of (N, H, W, K)
        i += 5
    return out


class Transformer:
    """Turns (H, W, K) images into the net's (K, H, W) input; see the module docstring.

    inputs : {input blob name: its shape (N, K, H, W)}
    """

    def __init__(self, inputs):
        self.inputs = dict(inputs)
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise PycaffeError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        """(H, W, K) image -> (K, H', W') float32 net input for blob ``in_``."""
        self.__check_input(in_)
        x = data.astype(np.float32, copy=False)
        dims = tuple(self.inputs[in_][2:])
        if x.shape[:2] != dims:
            x = resize_image(x, dims)
        if self.transpose.get(in_) is not None:
            x = x.transpose(self.transpose[in_])
        if self.channel_swap.get(in_) is not None:
            x = x[self.channel_swap[in_], :, :]
        if self.raw_scale.get(in_) is not None:
            x *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            x -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_, data):
        """The inverse of :meth:`preprocess` (without the resize): (K, H, W) -> (H, W, K)."""
        self.__check_input(in_)
        x = data.copy().squeeze()
        if self.input_scale.get(in_) is not None:
            x /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            x += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            x /= self.raw_scale[in_]
        if self.channel_swap.get(in_) is not None:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if self.transpose.get(in_) is not None:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_, order):
        """Axis order from the image to the input, e.g. (2, 0, 1) for HWC -> CHW."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise PycaffeError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order of the input, e.g. (2, 1, 0) for RGB -> BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise PycaffeError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the image by ``scale`` (255 for [0, 1] images and 0-255 models)."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Subtract ``mean``: (K,) per channel, or (K, H, W) exactly the input's shape."""
        self.__check_input(in_)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if tuple(ms) != tuple(self.inputs[in_][1:]):
                raise ValueError(f"Mean shape {tuple(ms)} incompatible with input shape {tuple(self.inputs[in_][1:])}.")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the mean-subtracted input by ``scale``."""
        self.__check_input(in_)
        self.input_scale[in_] = scale
