"""Image classification (the paper's §6.1): logits over the checkpoint's classes, judged by top-1
agreement with eager fp32, the logits' SNR and, with labelled pictures, the paired accuracy drop."""

from mbv3_mobile.tasks.registry import TaskSpec, register_task

SPEC = register_task(TaskSpec(
    name="classification",
    title="image classification",
    model_builders=("mbv3_mobile:mobilenet_v3_large", "mbv3_mobile:mobilenet_v3_small"),
    checkpoint_layouts=("mbv3-mobile .safetensors", "torchvision mobilenet_v3_large/small state_dict",
                        "timm mobilenetv3_* state_dict (key map)"),
    outputs="mbv3_mobile.tasks.classification.outputs",
    figures="mbv3_mobile.tasks.classification.figures",
    snippets="mbv3_mobile.tasks.classification.snippets",
))
