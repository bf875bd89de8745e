"""The floor under export and runtime: model configs, export metadata, the model file's integrity and the
export directory's publishing. Plain Python: nothing here imports torch or onnx."""
