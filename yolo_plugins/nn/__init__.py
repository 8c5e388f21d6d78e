"""Network modules: the registry (YAML name -> class + channel rule), the backbone base class with its feature record,
shared layers, one file per family (TransNeXt, TransXNet, RepViT), ContextAggregation and the timm row."""
