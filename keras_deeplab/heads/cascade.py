"""DeepLab v3 cascaded atrous blocks (the paper's "going deeper" variant).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587, §3.2: copies of ResNet block4 (three bottleneck units, 2048
channels) are appended as block5, block6, ... with no striding; each copy doubles
the atrous rate (block4 runs at rate 32 / output_stride), and the unit rates follow
the multi-grid. The official TF code has no such head; the paper's best model
uses ASPP instead.
"""

from keras_deeplab.backbones.resnet import BASE_DEPTHS, _beta_bottleneck, _caffe_unit
from keras_deeplab.registry import Head, register_head


def cascade(x, flavour="beta", output_stride=16, num_blocks=3, multi_grid=None):
    """Appends `num_blocks` copies of ResNet block4 to `x`; returns the features.

    Args:
        x: ResNet block4 output (2048 channels).
        flavour: `"beta"` (official v3 ResNet units) or `"caffe"` (keras.applications units).
        output_stride: the backbone's output stride.
        num_blocks: how many copies (block5, block6, ...).
        multi_grid: unit rates inside each copy (default (1, 1, 1)).
    """
    multi_grid = tuple(multi_grid or (1, 1, 1))
    base = BASE_DEPTHS[-1]
    rate = 32 // output_stride
    for block in range(5, 5 + num_blocks):
        rate *= 2
        for u, unit_rate in enumerate(multi_grid):
            if flavour == "beta":
                name = f"block{block}_unit_{u + 1}_bottleneck_v1"
                x, _ = _beta_bottleneck(x, 4 * base, base, 1, rate * unit_rate, name)
            else:
                x = _caffe_unit(
                    x, base, 1, rate * unit_rate, False, f"conv{block + 1}_block{u + 1}"
                )
    return x


def _build(x, features, args):
    backbone = args["backbone"]
    if not backbone.startswith("resnet"):
        raise ValueError(
            f"The cascade head copies ResNet block4; backbone {backbone!r} is not a ResNet."
        )
    return cascade(
        x,
        flavour="beta" if backbone.endswith("_beta") else "caffe",
        output_stride=args["output_stride"],
        num_blocks=args["cascade_blocks"],
        multi_grid=args["multi_grid"],
    )


register_head(
    Head(
        "cascade",
        build=_build,
        options={"cascade_blocks": 3},
        description="DeepLab v3 cascade: copies of ResNet block4 at doubling rates",
    )
)
