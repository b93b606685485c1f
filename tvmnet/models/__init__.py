"""Model zoo: MobileNet v1 (Howard et al. 2017) with width and resolution multipliers."""

from tvmnet.models.mobilenet import MobileNetV1, build_model, layer_table, load_weights, scaled_channels

__all__ = ["MobileNetV1", "build_model", "layer_table", "load_weights", "scaled_channels"]
