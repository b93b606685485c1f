"""int8: post-training static quantization of the model before the graph passes.

``calibration``: the inputs that set the activation ranges (images from a folder, or seeded
samples); ``qdq``: ONNX Runtime's ``quantize_static`` on the model's ONNX export, giving a QDQ
model that is both what tvmnet compiles and the quantized reference its output is checked against.
"""
