"""The Keras models: backbones (EfficientNet-B0 and the ablations' ResNets), the
serializable layers, pretrained weights, the stream spec, what a saved model
says it is, and the stream and two-stream builders (paper Sect. 3, Fig. 1).

May import: `mat_effnet.common`.
"""
