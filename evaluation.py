"""Scoring models on data: Pearson r of whole recording parts, z-scored predictions, seed ensembles."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

import runtime
from challenge import mean_by_subject
from checkpoint import load_model
from metrics import pearson, zscore


def zscore_prediction(y, dim: int = -1):
    """A prediction standardized along time (``dim``), so every seed weighs the same in an ensemble.
    Works on tensors and arrays; a constant prediction becomes zeros (``metrics.zscore``)."""
    return zscore(y, dim)


@torch.no_grad()
def predict(model, eeg, subject_index: int, device, amp: str = "none") -> torch.Tensor:
    """eeg (time, n_chans) or (batch, time, n_chans) -> prediction (time,) or (batch, time), float32 on CPU."""
    x = torch.as_tensor(eeg).to(device)
    single = x.dim() == 2
    x = x[None] if single else x
    subj = torch.full((len(x),), subject_index, dtype=torch.long, device=device)
    with runtime.autocast(device, amp):
        y = model(x, subject=subj)
    y = y.float().cpu()[:, :, 0]
    return y[0] if single else y


@torch.no_grad()
def evaluate(model, recordings, part: str, device, subject_index: dict, amp: str = "none") -> dict:
    """Pearson r of whole ``part`` of each recording: {'r': mean over subjects, 'per_subject': {...}}.

    Under torchrun each rank scores every world_size-th recording and the (subject, r) pairs are
    gathered, so every rank returns the same figure as one process would."""
    model.eval()
    world = runtime.world_size()
    subjects, rs = [], []
    for rec in list(recordings)[runtime.rank()::world]:
        if rec.length(part) == 0:
            continue
        eeg, env = rec.get(part)
        pred = predict(model, eeg, subject_index.get(rec.subject, -1), device, amp)
        subjects.append(rec.subject)
        rs.append(float(pearson(pred, torch.from_numpy(env[:, 0]), dim=0)))
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (subjects, rs))
        subjects = [s for g in gathered for s in g[0]]
        rs = [r for g in gathered for r in g[1]]
    per_subject = mean_by_subject(subjects, rs)
    r = float(np.mean(list(per_subject.values()))) if per_subject else float("nan")
    return {"r": r, "per_subject": per_subject}


def ensemble_r(recordings, part: str, per_seed_preds: list[list]) -> float:
    """r of the seeds' ensemble: each seed's z-scored predictions of every recording's ``part``
    averaged over seeds, scored per recording, mean per subject, then over subjects."""
    rs = []
    for i, rec in enumerate(recordings):
        ens = sum(zscore_prediction(p[i].double()) for p in per_seed_preds) / len(per_seed_preds)
        rs.append(float(pearson(ens, torch.from_numpy(rec.get(part)[1][:, 0]).double(), dim=0)))
    return float(np.mean(list(mean_by_subject((rec.subject for rec in recordings), rs).values())))


@torch.no_grad()
def seed_ensemble(paths: list, model_name: str, corpus, device) -> dict:
    """Validation r of each seed's best.pt (``paths``) and of their ensemble, built the way test.py
    builds it: each seed's prediction z-scored, then averaged over seeds."""
    recs, preds, per_seed = corpus.with_part("val"), [], {}
    for path in paths:
        model, ck = load_model(path, device, model_name)
        index = {s: i for i, s in enumerate(ck["subjects"])}
        preds.append([predict(model, rec.get("val")[0], index.get(rec.subject, -1), device) for rec in recs])
        per_seed[f"seed-{ck['seed']}"] = float(ck["best_val_r"])
    vals = np.array(list(per_seed.values()))
    return {"model": model_name, "seeds": [int(k[5:]) for k in per_seed], "val_r_per_seed": per_seed,
            "val_r_mean": float(vals.mean()), "val_r_sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "val_r_ensemble": ensemble_r(recs, "val", preds)}
