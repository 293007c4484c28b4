"""Zero-initialised residual branches: every residual block starts as the identity.

The last BatchNorm of each residual branch gets gamma 0, so at step 0 a block passes its
shortcut through unchanged and the network trains as a shallower one at first (Goyal et al.,
"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv:1706.02677, section 5.1;
torchvision's `zero_init_residual`, timm's `zero_init_last`). For training from random
weights: set `model.zero_init_residual: true` in a training config.

Example:
    ```python
    model = keras_deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=5,
                                       backbone="mobilenetv2_dm05")
    names = zero_init_residual(model)  # the 10 `expanded_conv_*_project_BatchNorm` layers
    ```
"""

import keras


def _inputs(tensor):
    """The tensors the operation producing `tensor` consumed (Keras 3 functional graph)."""
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index].input_tensors


def _ancestors(tensor):
    """Ids of the operations `tensor` depends on, its producer included."""
    seen, stack = set(), [tensor]
    while stack:
        operation, inputs = _inputs(stack.pop())
        if id(operation) not in seen:
            seen.add(id(operation))
            stack.extend(inputs)
    return seen


def residual_branch_ends(model):
    """The BatchNorm layers that end a residual branch (backbone and heads).

    A residual `Add` has two inputs: the shortcut (the block input, or a projection of it)
    and the branch, the input computed by more operations of its own. The branch's producer
    counts when it is a `BatchNormalization`.
    """
    ends = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.Add) or not layer._inbound_nodes:
            continue
        inputs = layer._inbound_nodes[0].input_tensors
        if len(inputs) != 2:
            continue
        first, second = (_ancestors(t) for t in inputs)
        own = len(first - second), len(second - first)
        if own[0] == own[1]:
            continue
        producer, _ = _inputs(inputs[0] if own[0] > own[1] else inputs[1])
        if isinstance(producer, keras.layers.BatchNormalization):
            ends.append(producer)
    return ends


def zero_init_residual(model):
    """Sets gamma to 0 in the BatchNorm ending each residual branch; returns their names.

    Raises:
        ValueError: the model has no residual block ending in BatchNorm (e.g. a VGG backbone).
    """
    ends = residual_branch_ends(model)
    if not ends:
        raise ValueError(
            f"{model.name} has no residual block ending in BatchNormalization (VGG backbones "
            "and models without a backbone have none); remove model.zero_init_residual."
        )
    for layer in ends:
        layer.gamma.assign(keras.ops.zeros_like(layer.gamma))
    return [layer.name for layer in ends]
