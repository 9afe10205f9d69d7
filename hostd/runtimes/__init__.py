"""Built-in model classes that serve a model file with no code (issue 17).

Each runtime is an ordinary strategy implementing the model contract (hostd.model): a host.yaml
entry names it as its ``class_path`` and gives the file in ``configuration``::

    - class_path: hostd.runtimes.sklearn:SklearnModel
      configuration: {uri: models/iris.skops, name: iris}

Its schemas are pydantic models generated from what the artifact knows (feature names, classes), so
validation, metadata, OpenAPI, OIP v2 tensors, the typed gRPC services and ``hostd batch`` treat it
exactly as a hand-written model.
"""
