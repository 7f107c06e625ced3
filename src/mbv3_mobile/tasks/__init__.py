"""Tasks a MobileNetV3 is exported for (classification; segmentation and detection next), each a
package registering a `TaskSpec` (see `registry`)."""

from mbv3_mobile.tasks.registry import (
    DEFAULT_TASK,
    TaskError,
    TaskSpec,
    checkpoint_task,
    get_task,
    list_tasks,
    load_task_checkpoint,
    register_task,
)

__all__ = ["DEFAULT_TASK", "TaskError", "TaskSpec", "checkpoint_task", "get_task", "list_tasks", "load_task_checkpoint", "register_task"]
