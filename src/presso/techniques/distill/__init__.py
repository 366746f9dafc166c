"""Knowledge distillation: students derived from the teacher or built from scratch."""
