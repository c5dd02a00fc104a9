"""NetSpec: write Caffe nets in Python, as pycaffe's ``caffe.net_spec``.

    from minicaffe.net_spec import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])], ntop=2)
    n.ip = L.InnerProduct(n.data, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip, n.label)
    text = str(n.to_proto())          # prototxt that Caffe and minicaffe both read

``L.<Type>(*bottoms, ntop=1, in_place=False, **params)`` makes a layer of ``type: "<Type>"``
and returns its top (a :class:`Top`), a tuple of tops when ``ntop > 1``, or the layer itself
(a :class:`Function`) when ``ntop == 0``. Keyword parameters go, in this order of preference:

* names ending in ``param`` (``param``, ``transform_param``, ``convolution_param`` ...) to the
  LayerParameter field of that name;
* a field of the type's own ``<type>_param`` message (``num_output`` -> ``convolution_param``
  for Convolution; the message is found from its type name, InnerProductParameter ->
  ``inner_product_param``);
* otherwise a LayerParameter field (``loss_weight``, ``include``, ``propagate_down`` ...).

Values: a list (or tuple) fills a repeated field, a dict fills a message (a list of dicts a
repeated message), a scalar given to a repeated field becomes a one-element list; enum fields
take numbers (``P.Pooling.MAX``) or names (``"MAX"``).

Names: tops assigned to a NetSpec take the attribute name; the layer takes its first top's name.
Anything unnamed is called ``<Type><k>`` (a counter per type). ``to_proto()`` lists each layer
once, after everything it reads (depth-first from the assigned tops, in assignment order).
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from google.protobuf.descriptor import FieldDescriptor

from minicaffe.errors import NetBuildError
from minicaffe.proto import caffe_pb2


class NetSpecTypeError(NetBuildError, TypeError):
    """A layer input that is not a Top (also a TypeError, as pycaffe raises)."""


def _param_field_by_type() -> dict[str, str]:
    """Layer type name -> its LayerParameter ``*_param`` field (from the message type names)."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if not field.name.endswith("_param") or field.message_type is None:
            continue
        type_name = field.message_type.name
        if type_name.endswith("Parameter"):
            out[type_name[: -len("Parameter")]] = field.name
    return out


_PARAM_FIELD = _param_field_by_type()


def _enum_value(field, value):
    if isinstance(value, str) and field.enum_type is not None:
        ev = field.enum_type.values_by_name.get(value)
        if ev is None:
            names = list(field.enum_type.values_by_name)
            raise NetBuildError(f"field '{field.name}' takes one of {names}; received {value!r}")
        return ev.number
    return value


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 5 (``label`` is gone in 7)
        return bool(field.is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def assign_proto(message, name: str, value, *, where: str = "") -> None:
    """Set ``message.<name>`` from a Python value with pycaffe's conventions (see module doc)."""
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetBuildError(f"{where}{message.DESCRIPTOR.name} has no field {name!r}")
    is_message = field.message_type is not None
    if _is_repeated(field):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        container = getattr(message, name)
        for item in values:
            if is_message:
                sub = container.add()
                _fill_message(sub, item, where=where)
            else:
                container.append(_enum_value(field, item))
        return
    if is_message:
        _fill_message(getattr(message, name), value, where=where)
        return
    try:
        setattr(message, name, _enum_value(field, value))
    except (TypeError, ValueError) as exc:
        raise NetBuildError(
            f"{where}{message.DESCRIPTOR.name}.{name} cannot take {value!r}: {exc}"
        ) from None


def _fill_message(message, value, *, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assign_proto(message, key, item, where=where)
    elif hasattr(value, "DESCRIPTOR"):
        message.CopyFrom(value)
    else:
        raise NetBuildError(
            f"{where}{message.DESCRIPTOR.name} is a message: give it a dict; received {value!r}"
        )


class Top:
    """One output of a :class:`Function` (the ``n``-th top)."""

    def __init__(self, fn: Function, n: int):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def _update(self, params: dict) -> None:
        self.fn._update(params)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer under construction: a type, input Tops and parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise NetSpecTypeError(
                    f"{type_name}: bottom {i} must be a Top (the result of "
                    f"another layer); received {type(inp).__name__}"
                )
        self.inputs = tuple(inputs)
        params = dict(params)
        self.ntop = int(params.pop("ntop", 1))
        self.in_place = bool(params.pop("in_place", False))
        self.params = params
        if self.in_place and self.ntop != len(self.inputs):
            raise NetBuildError(
                f"{type_name}: in_place=True needs as many tops as bottoms "
                f"({len(self.inputs)}); ntop is {self.ntop}"
            )
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params: dict) -> None:
        """Merge ``params`` into this layer's parameters (pycaffe's NetSpec.update)."""
        self.params.update(params)

    def _auto(self, type_name: str, autonames: Counter) -> str:
        autonames[type_name] += 1
        return f"{type_name}{autonames[type_name]}"

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            names[top] = self._auto(top.fn.type_name, autonames)
        return names[top]

    def _layer_name(self, names: dict, autonames: Counter) -> str:
        if self not in names:
            names[self] = (
                self._top_name(self.tops[0], names, autonames)
                if self.ntop > 0
                else self._auto(self.type_name, autonames)
            )
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
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
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._layer_name(names, autonames)
        where = f"layer '{layer.name}' ({self.type_name}): "
        own = _PARAM_FIELD.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value, where=where)
            elif own is not None and key in getattr(layer, own).DESCRIPTOR.fields_by_name:
                assign_proto(getattr(layer, own), key, value, where=where)
            elif key in layer.DESCRIPTOR.fields_by_name:
                assign_proto(layer, key, value, where=where)
            else:
                holder = f"{own} or LayerParameter" if own else "LayerParameter"
                raise NetBuildError(
                    f"{where}unknown parameter {key!r}: it is not a field of {holder}"
                )
        layers[self] = layer

    def __repr__(self) -> str:
        return f"<Function {self.type_name} ({len(self.inputs)} bottoms, {self.ntop} tops)>"


def to_proto(*tops):
    """A NetParameter holding every layer needed to compute ``tops`` (auto-named)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops of a net under construction; ``to_proto()`` writes the NetParameter."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.__dict__["tops"][name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named {name!r}") from None

    def __setitem__(self, key: str, value) -> None:
        self.tops[key] = value

    def __getitem__(self, key: str):
        return self.tops[key]

    def __delitem__(self, key: str) -> None:
        del self.tops[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tops

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list:
        return list(self.tops.values())

    def update(self, name: str, params: dict) -> None:
        """As pycaffe: merge ``params`` into the parameters of the layer that makes top
        ``name`` (``n.update('conv1', dict(num_output=16))``)."""
        if name not in self.tops:
            raise AttributeError(f"NetSpec has no top named {name!r}")
        if not isinstance(params, dict):
            raise NetSpecTypeError(f"update({name!r}, ...): give the layer parameters as a "
                                   f"dict; received {type(params).__name__}")
        self.tops[name]._update(params)

    def to_proto(self):
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(...)``: a layer-making function for any type name."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def make(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        make.__name__ = type_name
        return make


class _EnumScope:
    def __init__(self, message_type: str):
        self._message = getattr(caffe_pb2, message_type)

    def __getattr__(self, name: str):
        try:
            return getattr(self._message, name)
        except AttributeError:
            raise AttributeError(
                f"{self._message.DESCRIPTOR.name} has no enum value or nested name {name!r}"
            ) from None


class Parameters:
    """``P.<Type>.<NAME>``: enum constants of ``<Type>Parameter`` (``P.Pooling.MAX``)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        if not hasattr(caffe_pb2, type_name + "Parameter"):
            raise AttributeError(f"there is no message {type_name}Parameter in caffe.proto")
        return _EnumScope(type_name + "Parameter")


layers = Layers()
params = Parameters()

__all__ = [
    "Function",
    "Layers",
    "NetSpec",
    "Parameters",
    "Top",
    "assign_proto",
    "layers",
    "params",
    "to_proto",
]
