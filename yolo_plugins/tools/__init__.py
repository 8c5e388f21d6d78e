"""Tools around the models: the ``yolo-plugins`` command line, the benchmark, the speed tool, the embedded dataset and
the per-layer shape table."""
