"""`corea train`: GRPO (TRL) on a causal LM with the contract's prompts and the COREA rewards.

Rollouts are grammar-free: the model writes the contract's text on its own and the rewards
parse it with fmt.parse, the parser the runtime uses. The prompt is the chat template plus the
opening of the reply's first field (e.g. ``{"reasoning": "``): the runtime's grammar forces that
opening anyway, and without it the 135M model almost never starts the JSON by itself (measured:
0 of 16 samples at temperature 1.0 without it, about a third parse with it).

The result is a plain safetensors folder (model + tokenizer) that resolve_model, TorchExecutor
and `corea solve --model FOLDER` load unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..contract import Format, build_messages, get_format
from .rewards import CONFIDENCE_REWARDS, RewardSet
from .tasks import Problem, training_problems

log = logging.getLogger(__name__)

_SLOT_R, _SLOT_A = "REASONINGSLOT", "ANSWERSLOT"


def response_prefix(fmt: Format | str) -> str:
    """The reply text before the first field's value: what the grammar forces at the start."""
    fmt = get_format(fmt)
    text = fmt.render(_SLOT_R, _SLOT_A, 0.5)
    cuts = [i for i in (text.find(_SLOT_R), text.find(_SLOT_A), text.find("0.5")) if i >= 0]
    return text[: min(cuts)]


def build_prompt(tokenizer, question: str, fmt: Format | str) -> str:
    """Chat-templated prompt text (system = the contract's instructions) ending in the prefix."""
    fmt = get_format(fmt)
    text = tokenizer.apply_chat_template(build_messages(question, fmt), add_generation_prompt=True, tokenize=False)
    return text + response_prefix(fmt)


@dataclass
class TrainSettings:
    model: str | None = None  # resolve_model spec: None = embedded SmolLM2
    output_dir: str = "corea-trained"
    contract: str = "json"
    # Defaults measured on the embedded SLM (benchmarks/training/README.md): rollouts cool enough
    # that easy questions' groups hold right and wrong answers, a KL anchor, the top 8 blocks,
    # and ~50 steps: past that the L1 reward keeps lowering the confidence below the base rate.
    steps: int = 50
    prompts_per_step: int = 4
    num_generations: int = 4
    max_completion_length: int = 64
    learning_rate: float = 2e-5
    temperature: float = 0.5
    beta: float = 0.04  # KL to the reference model; 0 = no reference copy (half the memory)
    train_layers: int | None = 8  # train only the top N transformer blocks (None: all weights)
    save_every: int | None = 25  # also export the model every N steps to OUTPUT/checkpoints/step-N
    distance: str = "l1"
    weights: dict[str, float] = field(default_factory=lambda: {"format": 0.5, "correctness": 1.0, "calibration": 1.0})
    # CoCA's segmented credit: confidence rewards (rewards.CONFIDENCE_REWARDS) advantage the
    # confidence's tokens, the other rewards the rest; needs a confidence-first contract
    segmented: bool = False
    task: str = "arithmetic"  # tasks.TASKS
    warm_start: int = 0  # questions for the supervised-calibration warm start (warm.py); 0: none
    warm_target: str = "level"  # warm.TARGETS
    warm_samples: int = 4  # replies per warm-start question
    warm_lr: float = 2e-5
    train_size: int = 2000
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    max_minutes: float | None = None  # stop after this much training wall time (shared CPUs vary)
    log_file: str | None = None  # default: OUTPUT/train_log.jsonl

    @property
    def log_path(self) -> Path:
        return Path(self.log_file) if self.log_file else Path(self.output_dir) / "train_log.jsonl"


def build_dataset(problems: list[Problem], tokenizer, fmt: Format | str):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": build_prompt(tokenizer, p.question, fmt),
                "answer": p.answer,
                "question_id": p.id,
                "difficulty": p.difficulty,
            }
            for p in problems
        ]
    )


def _log_callback(path: Path):
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """One JSON line per logging step: reward components, accuracy, mean confidence, loss."""

        def __init__(self):
            self.started = time.time()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "train_runtime" in logs:
                return
            row = {"step": state.global_step, "elapsed_s": round(time.time() - self.started, 2), **logs}
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

        def on_train_end(self, args, state, control, **kwargs):
            self.file.close()

    return JsonlLog()


def _time_budget_callback(minutes: float):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training after `minutes`: step time on shared cores varies several-fold."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.deadline = time.time() + minutes * 60

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() >= self.deadline:
                control.should_training_stop = True

    return TimeBudget()


def _checkpoint_callback(every: int, folder: Path, tokenizer):
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        """Exports the model every `every` steps, servable like the final one (for a curve or a pick)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                save_for_runtime(model, tokenizer, folder / f"step-{state.global_step}")

    return Checkpoints()


def _score_completion_tokens_only() -> None:
    """Make TRL's fused log-prob head score only completion tokens on CPU, as it does on GPUs.

    TRL (1.16) runs the vocabulary projection over every position, prompt included, on devices
    without Triton (fixed shapes avoid recompiles on Neuron); CPU has no recompiles to avoid, and
    with our ~150-token prompts and ~40-token replies scoring every position is ~4x the head
    work. The switch is the module-level name utils._use_triton, read only for that choice.
    """
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True


def confidence_tokens(tokenizer, completion_ids) -> int:
    """How many leading tokens of a confidence-first completion write the confidence value.

    The completion starts right after the field's opening (the response prefix), so the value is
    the run of tokens made only of digits, '.', '%', quotes and spaces; the first other character
    (',' or '<' or '}') opens the next field.
    """
    for k, token in enumerate(completion_ids):
        if set(tokenizer.decode([int(token)])) - set("0123456789.% \"'"):
            return k
    return len(completion_ids)


def _segmented_trainer_class():
    from trl import GRPOTrainer

    class SegmentedGRPOTrainer(GRPOTrainer):
        """GRPO with CoCA's segmented credit assignment (arXiv 2603.05881).

        The confidence rewards and the answer rewards each get their own group-relative
        advantage; the confidence's tokens take the first, every later token the second, as a
        (completions, tokens) advantage tensor (TRL's loss accepts that shape from subclasses).
        """

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            return self._rewards_per_func

        def _generate_and_score_completions(self, inputs):
            import torch

            out = super()._generate_and_score_completions(inputs)
            rewards = self._rewards_per_func.nan_to_num(0.0) * self.reward_weights.to(self._rewards_per_func.device)
            is_confidence = torch.tensor([name in CONFIDENCE_REWARDS for name in self.reward_func_names])
            g = self.num_generations
            ids = out["completion_ids"]
            advantages = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
            for part, columns in (("answer", ~is_confidence), ("confidence", is_confidence)):
                r = rewards[:, columns].sum(dim=1).view(-1, g)
                adv = ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-4)).view(-1)
                adv = adv[: len(ids)].to(ids.device)  # one process: its slice is the whole batch
                if part == "answer":
                    advantages[:] = adv.unsqueeze(1)
                else:
                    for row in range(len(ids)):
                        advantages[row, : confidence_tokens(self.processing_class, ids[row])] = adv[row]
            out["advantages"] = advantages
            return out

    return SegmentedGRPOTrainer


def load_trainable(spec: str | None):
    """(model, tokenizer, source) in float32 train mode, pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model

    source = resolve_model(spec)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source


def freeze_below(model, train_layers: int | None) -> int:
    """Leave only the top `train_layers` blocks and the final norm trainable; returns trainable params.

    Backward then stops at the lowest trainable block, which on CPU cuts a step's backward pass
    by the frozen share; the embeddings (tied to the output head in SmolLM2) stay as they were,
    so what the model reads and writes keeps its meaning.
    """
    if train_layers is not None:
        blocks = model.model.layers
        if not 1 <= train_layers <= len(blocks):
            raise ValueError(f"train_layers must be 1..{len(blocks)} for this model, got {train_layers}")
        model.requires_grad_(False)
        for block in blocks[len(blocks) - train_layers:]:
            block.requires_grad_(True)
        model.model.norm.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_trainer(settings: TrainSettings, model, tokenizer, problems: list[Problem] | None = None):
    """A GRPOTrainer over `problems` (default: settings.train_size generated training problems)."""
    from trl import GRPOConfig, GRPOTrainer

    fmt = get_format(settings.contract)
    if settings.segmented and not fmt.confidence_first:
        raise ValueError(f"segmented credit needs a confidence-first contract, got {fmt.name!r}")
    _score_completion_tokens_only()
    trainable = freeze_below(model, settings.train_layers)
    log.info("training %d of %d parameters", trainable, sum(p.numel() for p in model.parameters()))
    rewards = RewardSet(fmt, prefix=response_prefix(fmt), distance=settings.distance, weights=settings.weights)
    funcs, weights = rewards.functions()
    config = GRPOConfig(
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",  # a time budget may end the run at any step
        temperature=settings.temperature,
        beta=settings.beta,
        reward_weights=weights,
        seed=settings.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        # CPU on purpose: GRPOConfig defaults to bf16 and gradient checkpointing (GPU choices);
        # checkpointing a 135M model only trades time for memory we do not need to save.
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=not settings.progress,
    )
    if problems is None:
        problems = training_problems(settings.train_size, seed=settings.seed, task=settings.task)
    dataset = build_dataset(problems, tokenizer, fmt)
    trainer_class = _segmented_trainer_class() if settings.segmented else GRPOTrainer
    return trainer_class(
        model=model,
        reward_funcs=funcs,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[_log_callback(settings.log_path)]
        + ([_time_budget_callback(settings.max_minutes)] if settings.max_minutes else [])
        + ([_checkpoint_callback(settings.save_every, Path(settings.output_dir) / "checkpoints", tokenizer)]
           if settings.save_every else []),
    )


def save_for_runtime(model, tokenizer, folder: str | os.PathLike) -> Path:
    """Model + tokenizer as safetensors in `folder`, loadable by resolve_model/TorchExecutor."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def train(settings: TrainSettings) -> Path:
    """Run GRPO, save the model under settings.output_dir/model, return that folder."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    # The log-prob head's backward multiplies by softmax gradients, most of them denormal floats:
    # x86 handles those in microcode; flushing them to zero took a CPU step from 32 s to 23 s.
    torch.set_flush_denormal(True)
    model, tokenizer, source = load_trainable(settings.model)
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {**asdict(settings), "model_path": str(source.path)}
    if settings.warm_start:
        from .warm import warm_start

        freeze_below(model, settings.train_layers)
        # its own questions (another seed), drawn like GRPO's: never a held-out one
        problems = training_problems(settings.warm_start, seed=settings.seed + 1, task=settings.task)
        record["warm_start_result"] = warm_start(model, tokenizer, problems, settings.contract, target=settings.warm_target,
                                                 samples=settings.warm_samples, learning_rate=settings.warm_lr,
                                                 temperature=settings.temperature,
                                                 max_new_tokens=settings.max_completion_length, seed=settings.seed)
        warm = save_for_runtime(model, tokenizer, out / "checkpoints" / "warm")
        # GRPO starts from the warm model, and its KL anchor (TRL loads the reference from the
        # model's own path) is the warm model too, not the one before it
        model, tokenizer, _ = load_trainable(str(warm))
    (out / "train_settings.json").write_text(json.dumps(record, indent=2))
    trainer = make_trainer(settings, model, tokenizer)
    trainer.train()
    return save_for_runtime(trainer.model, tokenizer, out / "model")
