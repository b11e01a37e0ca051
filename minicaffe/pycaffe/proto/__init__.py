"""``caffe.proto``: holds ``caffe_pb2``, Caffe's protobuf message classes (needs ``protobuf``,
the ``pycaffe`` extra). Importing this package alone imports nothing from protobuf."""
