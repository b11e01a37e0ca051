"""pycaffe's ``NetSpec``: write Caffe nets as Python expressions, get a ``NetParameter``.

``n = NetSpec(); n.data, n.label = L.DummyData(shape=[...], ntop=2); n.conv1 =
L.Convolution(n.data, kernel_size=5, num_output=20); ...; n.to_proto()`` returns a
``caffe_pb2.NetParameter`` whose layers are named after the attributes (unnamed ones get the type
plus a counter, ``Convolution1``). ``L.<Type>(*bottoms, ntop=1, in_place=False, **params)``:
keyword arguments ending in ``param`` (and unknown ones) go to the ``LayerParameter`` itself,
the others to its ``<type>_param``; dicts become sub-messages and lists repeated fields.
``P.<Type>.<ENUM>`` reads enum values (``P.Pooling.MAX``). Needs protobuf (``caffe_pb2``); it
checks nothing about the net beyond "every bottom is a Top" — the Net does the rest.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from .proto import caffe_pb2


def param_name_dict():
    """{layer type: its parameter field prefix}, from LayerParameter's ``*_param`` fields."""
    out = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            tname = f.message_type.name
            if tname.endswith("Parameter"):
                out[tname[:-len("Parameter")]] = f.name[:-len("_param")]
    out.setdefault("Deconvolution", "convolution")
    return out


_param_names = param_name_dict()


def assign_proto(proto, name, value):
    """Set field ``name`` of message ``proto`` from a Python value (dict = message, list =
    repeated field, list of dicts = repeated messages)."""
    is_repeated = hasattr(getattr(proto, name), "extend")
    if is_repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                sub = getattr(proto, name).add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        else:
            getattr(proto, name).extend(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            assign_proto(getattr(proto, name), k, v)
    else:
        setattr(proto, name, value)


class Top:
    """One output of a Function (a layer) in a spec."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        """A NetParameter with this top and everything it depends on."""
        return to_proto(self)

    def _update(self, params):
        self.fn.params.update(params)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer in a spec: type, input Tops, parameters; made by ``L.<Type>(...)``."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = params
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place and (self.ntop != 1 or len(inputs) != 1):
            raise ValueError(f"{type_name}: in_place needs exactly one input and one top")
        self.tops = tuple(Top(self, k) for k in range(self.ntop))

    def _top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._top_name(top, names, autonames))
        layer.name = self._name(names, autonames)
        for k, v in self.params.items():
            if k.endswith("param") or self.type_name not in _param_names:
                assign_proto(layer, k, v)
                continue
            sub = getattr(layer, _param_names[self.type_name] + "_param")
            try:
                assign_proto(sub, k, v)
            except AttributeError:  # a LayerParameter field such as loss_weight or include
                assign_proto(layer, k, v)
        layers[self] = layer


class NetSpec:
    """Attributes are Tops; ``to_proto()`` names the layers after them."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops):
    """A NetParameter with ``tops`` and all the layers they depend on (auto-named)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers:
    """``L.<Type>(*bottoms, **params)`` -> a Top, a tuple of Tops (ntop > 1) or the Function (ntop 0)."""

    def __getattr__(self, name):
        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        return layer_fn


class _EnumView:
    def __init__(self, name):
        self._msg = getattr(caffe_pb2, name + "Parameter")

    def __getattr__(self, k):
        return getattr(self._msg, k)


class Parameters:
    """``P.<Type>.<ENUM>``: enum values of ``<Type>Parameter`` (``P.Pooling.MAX``)."""

    def __getattr__(self, name):
        return _EnumView(name)


layers = Layers()
params = Parameters()
