"""Fine-tuning shared by the techniques that train: QAT, pruning, low-rank, distillation."""

from presso.train.loop import FitReport, FitSettings, fit, label_loss, task_score, teacher_loss

__all__ = ["FitReport", "FitSettings", "fit", "label_loss", "task_score", "teacher_loss"]
