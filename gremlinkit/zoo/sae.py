"""Train the zoo's SAEs with sae_lens's own trainer, over activations read through gremlinkit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import SAETrainer

from gremlinkit.interventions import reconstruction_fit
from gremlinkit.subject import Subject


@dataclass(frozen=True)
class SAESpec:
    site: str = "blocks.2.hook_resid_pre"
    d_sae: int = 384
    k: int = 16
    training_tokens: int = 1_500_000
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0
    warm_up_steps: int = 20
    # Train on activations rescaled to a mean norm of sqrt(d_in), then fold the scale into the
    # weights, so the saved SAE reads raw activations. Real residual streams (norms in the hundreds)
    # need it; without it most features die before the decoder grows to their scale.
    normalize: bool = False
    dead_window: int = 200  # steps without firing after which a feature counts as dead (AuxK revives it)


@torch.no_grad()
def collect(subject: Subject, docs: list[np.ndarray], site: str, batch_docs: int = 64) -> torch.Tensor:
    """(N, d) float32 activations at ``site`` on the CPU over every real token of ``docs``.

    A leading BOS is excluded: its residual is a constant outlier that would spend features on one token.
    """
    chunks = []
    for start in tqdm(range(0, len(docs), batch_docs), desc=f"reading {site}", unit="batch", mininterval=10):
        rows = [torch.as_tensor(d) for d in docs[start:start + batch_docs]]
        acts = subject.activations(rows, site)  # (B, T, d), prompt indexing
        chunks.append(acts[subject.batch(rows).prompt_mask(skip_bos=True)].float().cpu())  # (n, d), row-major
    return torch.cat(chunks)


def _batches(acts: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """The activation iterator sae_lens trains from: endless shuffled epochs."""
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(acts) - batch_size + 1, batch_size):
            yield acts[order[start:start + batch_size]]


def train_sae(acts: torch.Tensor, spec: SAESpec, model_name: str, context_size: int) -> SAE:
    """A TopK SAE trained by ``SAETrainer``; returned as the inference ``SAE`` that ``save_model`` writes."""
    torch.manual_seed(spec.seed)
    scale = float(acts.shape[1] ** 0.5 / acts.norm(dim=1).mean()) if spec.normalize else 1.0
    cfg = TopKTrainingSAEConfig(
        d_in=acts.shape[1], d_sae=spec.d_sae, k=spec.k, dtype="float32", device="cpu",
        metadata=SAEMetadata(model_name=model_name, hook_name=spec.site, context_size=context_size,
                             prepend_bos=True, exclude_special_tokens=True),
    )
    training_sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=spec.training_tokens, train_batch_size_samples=spec.batch_size, lr=spec.lr,
        lr_end=spec.lr / 10, lr_scheduler_name="cosineannealing", lr_warm_up_steps=spec.warm_up_steps, lr_decay_steps=0,
        dead_feature_window=spec.dead_window, feature_sampling_window=400, device="cpu",
    )
    gen = torch.Generator().manual_seed(spec.seed)
    batches = (b * scale for b in _batches(acts, spec.batch_size, gen))
    trained = SAETrainer(trainer_cfg, training_sae, batches).fit()
    inference = SAE.from_dict(trained.cfg.get_inference_sae_cfg_dict())
    state = trained.state_dict()
    trained.process_state_dict_for_saving_inference(state)
    inference.load_state_dict(state)
    if spec.normalize:
        inference.fold_activation_norm_scaling_factor(scale)  # now it reads raw activations
    return inference.eval()


@torch.no_grad()
def sae_metrics(sae: SAE, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Explained variance (`gremlinkit.interventions.reconstruction_fit`), mean L0 and dead-feature
    fraction of ``sae`` on (N, d) activations."""
    recon, fired, l0_sum = torch.empty_like(acts), torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 0.0
    for start in range(0, len(acts), batch_size):
        f = sae.encode(acts[start:start + batch_size])
        recon[start:start + batch_size] = sae.decode(f)
        fired |= (f > 0).any(0)
        l0_sum += (f > 0).sum().item()
    return {**reconstruction_fit(acts, recon), "l0": l0_sum / len(acts),
            "dead_fraction": 1 - fired.float().mean().item()}
