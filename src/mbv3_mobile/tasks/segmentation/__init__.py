"""Semantic segmentation (the paper's section 6.3): LR-ASPP on a MobileNetV3 backbone, logits per
class and pixel at the input size, judged by per-pixel agreement with eager fp32, the logits' SNR and,
with masks, the paired mIoU drop, each bounded over pictures (`figures`)."""

from mbv3_mobile.tasks.registry import TaskSpec, register_task

SPEC = register_task(TaskSpec(
    name="segmentation",
    title="semantic segmentation (LR-ASPP)",
    model_builders=("mbv3_mobile.tasks.segmentation.network:lraspp_mobilenet_v3_large",
                    "mbv3_mobile.tasks.segmentation.network:lraspp_mobilenet_v3_small"),
    checkpoint_layouts=("mbv3-mobile .safetensors (task segmentation)", "torchvision lraspp_mobilenet_v3_large state_dict",
                        "a classifier's backbone, for training (--init-backbone)"),
    outputs="mbv3_mobile.tasks.segmentation.outputs",
    figures="mbv3_mobile.tasks.segmentation.figures",
    snippets="mbv3_mobile.tasks.segmentation.snippets",
    default_recipe="segmentation",
))
