"""A digit-reversal LoRA adapter of the tiny model trained in this process (TRL SFTTrainer + PEFT,
no Ray): the e2e eval test's "better candidate", quicker than a training job.

    python -m tests.evals.quick_adapter MODEL_DIR OUT_DIR [STEPS]   # prints exact match and seconds
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path


def reversal_rows(n: int, seed: int) -> list[dict[str, str]]:
    from studio.models.tiny import reversal_example

    rng = random.Random(seed)
    return [dict(zip(("prompt", "completion"), reversal_example(rng), strict=True)) for _ in range(n)]


def train_adapter(model_dir: Path, out: Path, steps: int = 480, rows: int = 2000) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["completion"]}]}
                              for r in reversal_rows(rows, seed=11)])
    args = SFTConfig(output_dir=str(out / "work"), per_device_train_batch_size=64, max_steps=steps,
                     learning_rate=3e-3, lr_scheduler_type="linear", logging_steps=50, save_strategy="no",
                     report_to="none", bf16=False, fp16=False, use_cpu=True, disable_tqdm=True,
                     gradient_checkpointing=False, max_length=64, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    from studio.train.evaluate import exact_match

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 480
    t0 = time.monotonic()
    train_adapter(model_dir, out, steps)
    took = time.monotonic() - t0
    score = exact_match(str(model_dir), str(out), reversal_rows(100, seed=99))
    print(f"steps {steps}: exact match {score['exact_match']:.2f} in {took:.0f} s of training", flush=True)
