"""Reproduce the embedded default model from a seed: data, tokenizer, world model, evaluation.

    python -m mineworld.train                 # everything, writes assets/
    python -m mineworld.train --smoke         # a few steps of each stage on tiny data, temp dir
    python -m mineworld.train --evaluate-only # re-measure the shipped model, rewrite the card
    python -m mineworld.train --resume        # train the shipped model further

Stages (each has a wall-clock budget, --minutes):
1. data: scripted play (mineworld.world.scripted_actions) in many seeded worlds, rendered at the
   tokenizer's frame size by two processes and cached under data/ (git-ignored), so re-runs and
   later stages reuse it. Validation clips come from seeds that training never uses.
2. tokenizer: an FSQ autoencoder (mineworld.tokenizers.embedded) fitted on random frames;
   --resume trains its decoder alone further (the encoder, and so every code, stays), with
   --refine first giving it a full-size refinement stage.
3. world model: frames are tokenized once; the Transformer learns interleaved
   ``frame action frame action ...`` sequences (ActionCodec(offset=codebook), the published
   11-token layout) with the loss on image tokens only, AdamW, cosine LR; fp32, or bf16
   autocast with --bf16 (twice as fast on CPUs with AMX, ten times slower on those without:
   try both for a minute). --resume starts from the weights in --out instead, with
   its tokenizer, so the codes the model has learned stay the same.
4. evaluation against the world's true frames (see evaluate()); results go to the model card.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mineworld.cli import positive_int
from mineworld.controls import STARTS as CONTROL_STARTS
from mineworld.decoding import Sampling, sample
from mineworld.machine import machine

# PSNR of stacked frames pools their squared error: a mean of per-frame PSNRs would let an
# exact copy (the player standing still) count as infinite and swamp it.
from mineworld.metrics import psnr
from mineworld.world import replay, scripted_actions
from mineworld.world.render import SUPERSAMPLE

ROOT = Path(__file__).resolve().parent.parent
FRAME_SIZE = (64, 48)  # (width, height) the world renders at and the tokenizer works at
EPISODE_FRAMES = 500
TRAIN_SEED_BASE = 10_000  # training worlds are TRAIN_SEED_BASE + seed * 1000 + i
HELD_OUT_SEED_BASE = 900_000  # evaluation, validation clips and the scene: never trained on


def play_digest() -> str:
    """A short digest of the scripted player's code, docstrings and comments aside: the episode
    cache is keyed by it, so a change to the play renders new worlds instead of reading the old
    ones."""
    from mineworld.world import policy

    tree = ast.parse(Path(policy.__file__).read_text())
    for node in ast.walk(tree):
        documented = isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        if documented and ast.get_docstring(node):
            node.body = node.body[1:]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:8]


def render_episode(job: tuple[int, int, str, float]) -> tuple[str | None, bool]:
    """Play and render one episode into the cache folder unless it is there already or the
    ``deadline`` (a ``time.time()``) has passed: its file stem (None: out of time) and whether
    this call rendered it."""
    seed, frames, folder, deadline = job
    stem = Path(folder) / f"ep_{seed}"
    if stem.with_suffix(".npy").exists():
        return str(stem), False
    if time.time() > deadline:
        return None, False
    actions = scripted_actions(seed, frames)
    np.save(f"{stem}.tmp.npy", replay(seed, actions, FRAME_SIZE))
    stem.with_suffix(".json").write_text(json.dumps(actions))
    os.replace(f"{stem}.tmp.npy", stem.with_suffix(".npy"))  # complete files only
    return str(stem), True


def generate_data(seeds: list[int], frames: int, folder: Path, minutes: float,
                  processes: int = 2) -> tuple[list[str], int]:
    """Episodes for ``seeds``, in order, up to the first that is neither cached nor rendered
    before ``minutes`` run out (only rendering spends them: 0 reads the cache alone): their
    stems, and how many of them this call rendered."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * minutes
    jobs = [(s, frames, str(folder), deadline) for s in seeds]
    stems, rendered = [], 0
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for stem, new in tqdm(pool.imap(render_episode, jobs), total=len(jobs), desc="data"):
            if stem is None:
                pool.terminate()
                break
            stems.append(stem)
            rendered += new
    return stems, rendered


def load_frames(stems: list[str]) -> np.ndarray:
    """All frames of the episodes, uint8 [N, H, W, 3]."""
    return np.concatenate([np.load(f"{stem}.npy") for stem in stems])


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def budgeted_lr(step: int, total: int, peak: float, warmup: int, started: float,
                minutes: float) -> float:
    """The cosine runs on whichever ends first, the steps or the time budget, so a slow
    (shared) machine still anneals the LR before the budget stops training."""
    spent = (time.time() - started) / (60 * minutes)
    return cosine_lr(max(step, int(spent * total)), total, peak, warmup)


def autocast(bf16: bool):
    """bf16 autocast on the CPU: 1.5-2x as fast as fp32 where the CPU has AMX or AVX512-BF16 (the
    shipped model was trained so), ten times slower where it has neither."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def train_tokenizer(frames: np.ndarray, config, minutes: float, steps: int, seed: int,
                    log: dict, batch: int = 32, model=None, lr: float = 1e-3,
                    bf16: bool = False):
    """Fit the FSQ autoencoder with MSE on random frames, stopping at ``steps`` or the budget.
    Given ``model`` (a trained autoencoder), only its decoder trains: the encoder, and so every
    code a world model has learned, stays as it was."""
    from mineworld.tokenizers.base import uint8_to_float
    from mineworld.tokenizers.embedded import EmbeddedTokenizer, FSQAutoencoder

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if model is None:
        model, key, codes = FSQAutoencoder(config).train(), "tokenizer", None
    else:
        model, key = model.train(), "decoder"
        model.encoder.eval().requires_grad_(False)
        # The frozen encoder's codes, once: its share of every step goes to the decoder.
        with torch.no_grad():
            codes = torch.cat([model.fsq.quantize(model.encoder(uint8_to_float(chunk)))
                               for chunk in np.array_split(frames, len(frames) // 512 + 1)])
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=1e-4)
    started, losses = time.time(), []
    first_step = log.get(f"{key}_steps", 0)  # a resumed decoder's log continues the old one
    bar = tqdm(range(steps), desc=key)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = budgeted_lr(step, steps, lr, 100, started, minutes)
        picked = rng.integers(0, len(frames), batch)
        x = uint8_to_float(frames[picked])
        with autocast(bf16):
            reconstruction = model(x) if codes is None else model.decoder(codes[picked])
        loss = F.mse_loss(reconstruction.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clipped, at a peak LR of 1e-3: at 2e-3 unclipped, long runs diverge (the FSQ bounds
        # saturate and never recover; docs/embedded-model.md).
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            # MSE on [-1, 1] images -> PSNR on [0, 255]: 10 log10(4 / mse).
            recent = float(np.mean(losses[-50:]))
            bar.set_postfix(loss=f"{recent:.4f}", psnr=f"{10 * math.log10(4 / recent):.2f}")
            log.setdefault(f"{key}_loss", []).append([first_step + step, recent])
        if time.time() > started + 60 * minutes:
            break
    log[f"{key}_steps"] = first_step + step + 1
    return EmbeddedTokenizer(config, model.eval().requires_grad_(False))


def tokenize_episodes(tokenizer, stems: list[str], codec) -> list[tuple[torch.Tensor, ...]]:
    """Per episode: image ids [T, rows*cols] and action ids [T, 11]."""
    episodes = []
    for stem in tqdm(stems, desc="tokenize"):
        ids = tokenizer.encode(np.load(f"{stem}.npy"), batch_size=128).flatten(1)
        episodes.append((ids, torch.tensor([codec.encode(a) for a in episode_actions(stem)])))
    return episodes


def episode_actions(stem) -> list[dict]:
    return json.loads(Path(f"{stem}.json").read_text())


# Controls the scripted play holds in 4-11 % of its frames each (forward: 47 %, turns: 39 %).
RARE_CONTROLS = ("back", "left", "right", "jump", "sneak")


def window_sampler(stems: list, frames: int, boost: float) -> np.ndarray | None:
    """The cumulative odds of every training window (episode by episode, start by start):
    1 + ``boost`` x the share of the window's actions that hold a rare control, so that the
    controls the play seldom holds are trained on more often. None for ``boost`` 0 (uniform)."""
    if boost <= 0:
        return None
    odds = []
    for stem in stems:
        held = np.array([any(a.get(key, 0) for key in RARE_CONTROLS)
                         for a in episode_actions(stem)], dtype=float)
        # a window of ``frames`` frames is driven by the ``frames - 1`` actions between them
        share = np.convolve(held[: len(held) - 1], np.ones(frames - 1), "valid") / (frames - 1)
        odds.append(1 + boost * share)
    if len({len(o) for o in odds}) > 1:
        raise ValueError("window_sampler needs episodes of one length")
    return np.cumsum(np.concatenate(odds))


def make_batch(episodes, frames: int, batch: int, rng: np.random.Generator,
               windows: np.ndarray | None = None):
    """Random windows of ``frames`` frames: tokens [B, L] (frame action frame ... frame) and the
    targets, -100 where the target is not an image token (the loss is on image tokens only).
    ``windows``: the windows' cumulative odds (``window_sampler``; None: all alike)."""
    sequences = []
    for _ in range(batch):
        if windows is None:
            ids, actions = episodes[rng.integers(len(episodes))]
            t = int(rng.integers(0, len(ids) - frames + 1))
        else:  # every episode is as long, so window w is episode w // starts, start w % starts
            starts = len(windows) // len(episodes)
            episode, t = divmod(int(np.searchsorted(windows, rng.random() * windows[-1],
                                                    side="right")), starts)
            ids, actions = episodes[episode]
        parts = [torch.cat([ids[t + i], actions[t + i]]) for i in range(frames)]
        sequences.append(torch.cat(parts)[: -actions.shape[1]])  # ends with the last frame
    tokens = torch.stack(sequences)
    image = torch.zeros_like(tokens, dtype=torch.bool)
    frame_tokens = ids.shape[1] + actions.shape[1]
    for start in range(0, tokens.shape[1], frame_tokens):
        image[:, start:start + ids.shape[1]] = True
    targets = torch.where(image, tokens, torch.full_like(tokens, -100))
    return tokens[:, :-1], targets[:, 1:]


def feed_own_predictions(model, tokens: torch.Tensor, targets: torch.Tensor, share: float,
                         rng: np.random.Generator, bf16: bool = False,
                         sampling: Sampling | None = None, passes: int = 1) -> torch.Tensor:
    """``tokens`` with the image tokens of about ``share`` of the frames after the first replaced
    by the model's own predictions (greedy, or drawn with ``sampling``, as the model plays),
    while the targets stay true: parallel scheduled sampling (arXiv 1906.04331), so that the
    model learns to go on from frames of its own making, as it plays. The first pass predicts
    from the true tokens; each further pass predicts again from the tokens the last one fed, so
    that a fed frame after fed ones is made from the model's own frames, as in a rollout, where
    errors build up over frames. (Greedy rollouts froze in about half the moving frames before
    it and after it alike; under sampling, walking, strafing and backing up moved like the truth
    far more often after it: docs/embedded-model.md.)"""
    if share <= 0:
        return tokens
    frame_tokens = model.config.tokens_per_frame
    frame_of = torch.arange(1, tokens.shape[1]) // frame_tokens  # frame of input position j + 1
    chosen = torch.from_numpy(rng.random((tokens.shape[0], int(frame_of.max()) + 1)) < share)
    chosen[:, 0] = False  # the first frame stays real, as a session's context is
    replace = (targets[:, :-1] != -100) & chosen[:, frame_of]
    fed = tokens
    for _ in range(passes):
        with torch.no_grad(), autocast(bf16):
            logits = model(fed)[..., :model.config.codebook_size]
        if sampling is None:
            predicted = logits.argmax(-1)
        else:
            generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
            predicted = sample(logits.flatten(0, 1), sampling, generator).view(logits.shape[:-1])
        fed = tokens.clone()
        fed[:, 1:] = torch.where(replace, predicted[:, :-1], tokens[:, 1:])
    return fed


def train_world_model(config, episodes, minutes: float, steps: int, seed: int, log: dict,
                      batch: int = 8, lr: float = 1.5e-3, holdout=None, model=None,
                      bf16: bool = False, self_feed: float = 0.0, change_weight: float = 1.0,
                      windows: np.ndarray | None = None,
                      self_feed_sampling: Sampling | None = None, self_feed_passes: int = 1,
                      digit_weight: float = 0.0, levels: tuple[int, ...] = ()):
    """AdamW + cosine LR on random windows; ``holdout`` episodes give a validation loss.
    ``model`` continues an earlier run; otherwise training starts from a fresh one.
    ``self_feed``: the share of frames fed as the model's own predictions, drawn with
    ``self_feed_sampling`` (None: greedy) in ``self_feed_passes`` passes (see
    feed_own_predictions); ``change_weight``: see
    change_weights; ``windows``: see window_sampler; ``digit_weight``: the weight of
    digit_loss over the tokenizer's FSQ ``levels``."""
    from mineworld.model import Transformer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    first_step = log.get("world_model_steps", 0)  # a resumed run's log continues the old one
    model = (model or Transformer(config)).train().requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr,
                                  betas=(0.9, 0.95))
    frames = config.context_frames
    losses, started = [], time.time()
    bar = tqdm(range(steps), desc="world model")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = budgeted_lr(step, steps, lr, 50, started, minutes)
        tokens, targets = make_batch(episodes, frames, batch, rng, windows)
        tokens = feed_own_predictions(model, tokens, targets, self_feed, rng, bf16,
                                      self_feed_sampling, self_feed_passes)
        with autocast(bf16):
            logits = model(tokens)
        token_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                     reduction="none")
        if digit_weight:
            token_loss = token_loss + digit_weight * digit_loss(logits, targets, levels).flatten()
        weights = change_weights(targets, config.tokens_per_frame, change_weight).flatten()
        loss = (token_loss * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0:
            rate = (step + 1) * tokens.numel() / (time.time() - started)
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}", tok_s=f"{rate:.0f}")
            entry = [first_step + step, float(np.mean(losses[-25:]))]
            if holdout and step % 200 == 0:
                entry.append(validation_loss(model, holdout, frames))
                bar.write(f"step {step}: train {entry[1]:.3f} held-out {entry[2]:.3f}")
            log.setdefault("world_model_loss", []).append(entry)
        if time.time() > started + 60 * minutes:
            break
    log["world_model_steps"] = first_step + step + 1
    log["world_model_tokens_per_s"] = (step + 1) * tokens.numel() / (time.time() - started)
    return model.eval().requires_grad_(False)


def widen_mlp(model, inner: int):
    """``model`` with each MLP ``inner`` units wide, computing what it did: the trained units
    keep their weights, the new ones start as a fresh model's with their output weights at
    zero, so training adds capacity without first unlearning (a deeper or wider model
    trained from scratch would need the hours the shipped one had)."""
    from mineworld.model import Transformer

    old = model.config.intermediate_size
    if inner < old:
        raise ValueError(f"--mlp-width {inner} is narrower than the model's MLP ({old} units)")
    wide = Transformer(dataclasses.replace(model.config, intermediate_size=inner))
    state = wide.state_dict()
    for name, value in model.state_dict().items():
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            state[name][:old] = value
        elif name.endswith("down_proj.weight"):
            state[name][:, :old] = value
            state[name][:, old:] = 0
        else:
            state[name] = value
    wide.load_state_dict(state)
    return wide


def change_weights(targets: torch.Tensor, frame_tokens: int, weight: float) -> torch.Tensor:
    """Per target: ``weight`` for an image token whose code differs from the code at its place
    in the frame before, 1 for other image tokens, 0 where there is no target. Walking changes
    a few codes a frame among many that stay; unweighted, a code's likeliest next value is
    itself and greedy rollouts stand still. Weighting w multiplies the odds of a change by w
    at the loss's optimum, so still scenes (changes rare) stay still."""
    weights = (targets != -100).float()
    changed = (targets[:, frame_tokens:] != targets[:, :-frame_tokens]) & (
        targets[:, :-frame_tokens] != -100)
    weights[:, frame_tokens:][changed] = weight
    return weights


def digit_loss(logits: torch.Tensor, targets: torch.Tensor,
               levels: tuple[int, ...]) -> torch.Tensor:
    """Per target, the sum over the FSQ digits of its code of -log p(the code's digit), where
    p(digit = v) sums the odds of the image codes whose digit is v (0 where there is no
    target). Codes that share digits lie near each other in the tokenizer's latent space and
    draw alike; plain cross-entropy counts every wrong code as wrong as any other, this puts
    the odds of an unsure cell on codes that draw like the true one. A code's id is
    ``sum(digit[d] * prod(levels[:d]))``, so its odds reshape to one axis per digit, the first
    digit last."""
    codes = math.prod(levels)
    log_odds = logits[..., :codes].float().log_softmax(-1)
    log_odds = log_odds.reshape(*log_odds.shape[:-1], *reversed(levels))
    ids = targets.clamp(min=0)
    loss = torch.zeros(targets.shape, device=logits.device)
    digit_axes = range(log_odds.ndim - 1, targets.ndim - 1, -1)  # first digit: the last axis
    place = 1
    for level, axis in zip(levels, digit_axes, strict=True):
        others = [a for a in range(targets.ndim, log_odds.ndim) if a != axis]
        marginal = log_odds.logsumexp(others)  # [..., level]
        digit = (ids // place) % level
        loss = loss - marginal.gather(-1, digit[..., None])[..., 0]
        place *= level
    return torch.where(targets == -100, 0.0, loss)


@torch.no_grad()
def validation_loss(model, episodes, frames: int, batches: int = 4) -> float:
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(0)  # the same windows every time
    losses = []
    for _ in range(batches):
        tokens, targets = make_batch(episodes, frames, 8, rng)
        losses.append(F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).item())
    model.train(was_training)
    return float(np.mean(losses))


# -- evaluation --------------------------------------------------------------------------------

WARMUP = 20  # frames of play before an evaluation context, so it is not the spawn view
CONTEXT = 4  # real frames the rollouts start from
ROLLOUT = 8
SCRIPT_STEP = 5.146  # degrees per frame: one of the codec's exact camera bins
# Held-out worlds the card measures on. Action following is a hit or a miss per world: with 16,
# one world moved a script's share by 6 points ("walk forward": 75 % on the first 16 worlds and
# 85 % on the next 48, the same weights).
EVAL_WORLDS = 64
VALIDATION_FRAMES = 120
STRUCTURE_FRAMES = 100  # frames of each validation clip rolled out for the collapse measure
SPEED_ROUNDS = 4


def scripted_probe(kind: str) -> dict:
    """One frame of a probe script: turn left/right, look up/down, walk forward."""
    from mineworld.world.policy import action

    return {
        "turn_left": action(yaw=-SCRIPT_STEP), "turn_right": action(yaw=SCRIPT_STEP),
        "look_up": action(pitch=-SCRIPT_STEP), "look_down": action(pitch=SCRIPT_STEP),
        "walk_forward": action(forward=1),
    }[kind]


PROBES = ("turn_left", "turn_right", "look_up", "look_down", "walk_forward")


def rollout(model, tokenizer, context: np.ndarray, context_actions: list[dict],
            actions: list[dict], schedule: str = "naive", window: int | None = None,
            sampling=None, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Frames after ``context`` under ``actions`` (Session, no cache eviction), decoded with
    ``sampling`` (a decoding.Sampling, drawn from ``seed``) and ``window``, by default the
    model's own."""
    from mineworld.session import Session

    session = Session(model, tokenizer, strategy="none", reference_frames=len(context),
                      schedule=schedule, window=window, sampling=sampling, seed=seed)
    session.start(context, context_actions)
    frames, stats = [], []
    for a in actions:
        frame, stat = session.step(a)
        frames.append(frame)
        stats.append(stat)
    return np.stack(frames), stats


def eval_cases(count: int, offset: int = 0):
    """Held-out (seed, actions, frames) with CONTEXT + ROLLOUT frames after some play."""
    cases = []
    for i in range(count):
        seed = HELD_OUT_SEED_BASE + offset + i
        all_actions = scripted_actions(seed, WARMUP + CONTEXT + ROLLOUT)
        frames = replay(seed, all_actions, FRAME_SIZE)[WARMUP:]
        cases.append((seed, all_actions, all_actions[WARMUP:], frames))
    return cases


def decodings(config) -> dict:
    """Plain greedy, and the decoding the model ships as its default when that differs."""
    from mineworld.decoding import Sampling

    shipped = Sampling.model_default(config)
    return {"greedy": Sampling(), **({"shipped": shipped} if shipped != Sampling() else {})}


def long_rollout_structure(model, tokenizer, clips: list[Path], sampling, schedule: str,
                           frames: int = STRUCTURE_FRAMES) -> dict:
    """Per validation clip, ``frames`` frames rolled out under its actions after CONTEXT real
    ones: the lowest and the mean scene ratio against the true frames (see
    metrics.scene_ratio: the lower of the contrast and colourfulness ratios; a frame collapsed
    into flat colour or haze is near 0)."""
    from mineworld.metrics import scene_ratio
    from mineworld.world import read_recording, replay_recording

    found = {}
    for clip in clips:
        _, actions = read_recording(clip)
        true = replay_recording(clip)[:CONTEXT + frames]
        made, _ = rollout(model, tokenizer, true[:CONTEXT], actions[:CONTEXT - 1],
                          actions[CONTEXT - 1:CONTEXT - 1 + len(true) - CONTEXT], schedule,
                          sampling=sampling)
        ratio = scene_ratio(made, true[CONTEXT:])
        found[clip.name] = {"frames": len(made), "min": float(ratio.min()),
                            "mean": float(ratio.mean())}
    return found


def teacher_forcing(model, tokenizer, data) -> dict:
    """Whole windows of real frames, argmax at every image position, against copying the
    previous frame's tokens."""
    from mineworld.actions import ActionCodec

    codec = ActionCodec(offset=tokenizer.codebook_size)
    rows_cols = tokenizer.tokens_per_frame
    correct = copy_correct = total = 0
    for _, all_actions, _, frames in data:
        ids = tokenizer.encode(frames).flatten(1)
        acts = torch.tensor([codec.encode(a) for a in all_actions[WARMUP:]])
        n = min(len(frames), model.config.context_frames)
        seq = torch.cat([torch.cat([ids[i], acts[i]]) for i in range(n)])[:-acts.shape[1]]
        with torch.no_grad():
            pred = model(seq[None, :-1])[0, :, :tokenizer.codebook_size].argmax(-1)
        step = rows_cols + acts.shape[1]
        for i in range(1, n):
            begin = i * step
            predicted = pred[begin - 1:begin - 1 + rows_cols]
            correct += int((predicted == ids[i]).sum())
            copy_correct += int((ids[i - 1] == ids[i]).sum())
            total += rows_cols
    return {"teacher_forced_accuracy": correct / total,
            "copy_previous_accuracy": copy_correct / total}


def rollout_scores(model, tokenizer, data, schedule: str, strip_path=None) -> dict:
    """Greedy rollouts under each case's own actions against another case's actions, repeating
    the last real frame, and (when the model ships another decoding) rollouts decoded that way;
    one step ahead against the tokenizer's own reconstruction."""
    from mineworld.decoding import Sampling

    own, own_shipped, other, copy, copy_tokens, truths = [], [], [], [], [], []
    greedy, shipped = Sampling(), decodings(model.config).get("shipped")
    strip_rows = []
    for k, (_, _, actions, frames) in enumerate(tqdm(data, desc="rollouts")):
        context, truth = frames[:CONTEXT], frames[CONTEXT:CONTEXT + ROLLOUT]
        ctx_actions = actions[:CONTEXT - 1]
        mine = actions[CONTEXT - 1:CONTEXT - 1 + ROLLOUT]
        theirs = data[(k + 1) % len(data)][2][CONTEXT - 1:CONTEXT - 1 + ROLLOUT]
        predicted, _ = rollout(model, tokenizer, context, ctx_actions, mine, schedule,
                               sampling=greedy)
        swapped, _ = rollout(model, tokenizer, context, ctx_actions, theirs, schedule,
                             sampling=greedy)
        if shipped:
            own_shipped.append(rollout(model, tokenizer, context, ctx_actions, mine, schedule,
                                       sampling=shipped, seed=k)[0])
        own.append(predicted)
        other.append(swapped)
        truths.append(truth)
        copy.append(np.repeat(context[-1:], ROLLOUT, 0))
        # What repeating the last frame's tokens gives: copy, seen through the tokenizer.
        copy_tokens.append(np.repeat(tokenizer.decode(tokenizer.encode(context[-1:])), ROLLOUT, 0))
        if k < 3:
            strip_rows += [np.concatenate(list(truth), 1), np.concatenate(list(predicted), 1)]
    # One step ahead: the first generated frame against the truth, and against what the
    # tokenizer itself makes of that frame (the best any frame of codes can be).
    first_truths = np.stack([truth[0] for truth in truths])
    results = {
        "one_step_psnr_db": psnr(np.stack([frames[0] for frames in own]), first_truths),
        "one_step_tokenizer_psnr_db": psnr(tokenizer.decode(tokenizer.encode(first_truths)),
                                           first_truths),
    }
    truths = np.concatenate(truths)
    results["rollout_psnr_db"] = psnr(np.concatenate(own), truths)
    if shipped:
        results["rollout_shipped_psnr_db"] = psnr(np.concatenate(own_shipped), truths)
    results["rollout_other_actions_psnr_db"] = psnr(np.concatenate(other), truths)
    results["copy_last_frame_psnr_db"] = psnr(np.concatenate(copy), truths)
    results["copy_last_frame_tokens_psnr_db"] = psnr(np.concatenate(copy_tokens), truths)
    if strip_path:
        import cv2

        strip = np.concatenate(strip_rows, 0)
        cv2.imwrite(str(strip_path), cv2.resize(strip[..., ::-1], None, fx=2, fy=2,
                                                interpolation=cv2.INTER_NEAREST))
    return results


NEAR_MISSES = {"turned_1_degree": (1.0, 0.0), "moved_0.1_block": (0.0, 0.1)}


def views_off_by(seed: int, actions: list[dict], offsets: list[tuple[float, float]]) -> np.ndarray:
    """The views after ``actions`` in world ``seed``, one per (yaw, ahead) offset: the camera
    turned ``yaw`` degrees further right and moved ``ahead`` blocks along the level heading."""
    from mineworld.world import Game
    from mineworld.world.render import render

    game = Game(seed, FRAME_SIZE)
    for a in actions:
        game.player.step(a)
    player = game.player
    heading = math.radians(player.yaw)
    views = []
    for yaw, ahead in offsets:
        eye = np.add(player.eye, ahead * np.array([-math.sin(heading), 0.0, math.cos(heading)]))
        views.append(render(game.world, tuple(eye), player.yaw + yaw, player.pitch, FRAME_SIZE))
    return np.stack(views)


def near_miss_scores(tokenizer, data) -> dict:
    """What one step ahead scores for a picture that is right but for its camera: each case's
    first rolled-out view rendered by the world with the camera turned 1 degree (a fifth of
    a turn step) or moved 0.1 block (a quarter of a walking step), through the tokenizer,
    against the true view. The distance of one step ahead from the tokenizer's reconstruction
    reads against these."""
    offsets = list(NEAR_MISSES.values())
    views = np.stack([views_off_by(seed, all_actions[:WARMUP + CONTEXT], offsets)
                      for seed, all_actions, _, _ in data])  # [cases, offsets, H, W, 3]
    truths = np.stack([frames[CONTEXT] for *_, frames in data])
    return {"one_step_near_miss_psnr_db": {
        name: psnr(tokenizer.decode(tokenizer.encode(views[:, k])), truths)
        for k, name in enumerate(NEAR_MISSES)}}


def action_following(model, tokenizer, data, schedule: str) -> dict:
    """The same context under five scripts, each truth rendered by the world: which script's
    truth each greedy rollout is closest to."""
    from mineworld.decoding import Sampling

    closest = {p: {q: 0 for q in PROBES} for p in PROBES}  # script -> whose truth it resembled
    for seed, all_actions, actions, frames in tqdm(data, desc="action probes"):
        context, ctx_actions = frames[:CONTEXT], actions[:CONTEXT - 1]
        lead = all_actions[:WARMUP + CONTEXT - 1]  # up to the last context frame
        truths, preds = [], []
        for probe in PROBES:
            script = [scripted_probe(probe)] * ROLLOUT
            # One more action, so the last frame shows the last scripted action's effect.
            truths.append(replay(seed, lead + script * 2, FRAME_SIZE)[len(lead) + 1:][:ROLLOUT])
            preds.append(rollout(model, tokenizer, context, ctx_actions, script, schedule,
                                 sampling=Sampling())[0])
        for probe, pred in zip(PROBES, preds, strict=True):
            errors = [np.mean((pred.astype(float) - t.astype(float)) ** 2) for t in truths]
            closest[probe][PROBES[int(np.argmin(errors))]] += 1
    per_probe = {p: closest[p][p] / len(data) for p in PROBES}
    return {"action_following": float(np.mean(list(per_probe.values()))),
            "action_following_per_probe": per_probe, "action_following_closest": closest}


def single_colour_frames(model, tokenizer, schedule: str, long_frames: int) -> dict:
    """No collapse: a long greedy rollout under held-out play, no frame of a single colour."""
    from mineworld.decoding import Sampling

    seed = HELD_OUT_SEED_BASE + 100
    play = scripted_actions(seed, CONTEXT + long_frames)
    frames = replay(seed, play[:CONTEXT], FRAME_SIZE)
    long, _ = rollout(model, tokenizer, frames, play[:CONTEXT - 1], play[CONTEXT - 1:-1],
                      schedule, sampling=Sampling())
    spread = long.reshape(len(long), -1, 3).max(1) - long.reshape(len(long), -1, 3).min(1)
    return {"long_rollout_frames": long_frames,
            "single_colour_frames": int((spread.max(1) == 0).sum()),
            "long_rollout_min_pixel_std": float(long.reshape(len(long), -1).std(1).min())}


SPEED_FIELDS = ("render_ms_per_frame", "fps_naive", "fps_naive_median_frame", "fps_diagonal",
                "fps_diagonal_median_frame", "fps_diagonal_window_2",
                "fps_diagonal_window_2_median_frame", "threads", "speed_sampling",
                "tokenizer_decode_ms", "machine")


def speed(model, tokenizer, case, speed_frames: int) -> dict:
    """Speed on this machine: the world's renderer, then frames per second after prefill,
    tokenizer decode included: naive, diagonal with the model's window, and diagonal with
    MineWorld's window 2 for comparison, in alternating rounds so that the host's drift hits
    each alike."""
    seed, all_actions, actions, frames = case
    started = time.perf_counter()
    replay(seed, all_actions, FRAME_SIZE)
    results = {"render_ms_per_frame": (time.perf_counter() - started) / len(all_actions) * 1000}
    timed = {"naive": ("naive", None), "diagonal": ("diagonal", None),
             "diagonal_window_2": ("diagonal", 2)}
    ms = {name: [] for name in timed}
    for _ in range(SPEED_ROUNDS):
        for name, (schedule, window) in timed.items():
            _, stats = rollout(model, tokenizer, frames[:CONTEXT], actions[:CONTEXT - 1],
                               actions[CONTEXT - 1:][:1] * (1 + speed_frames // SPEED_ROUNDS),
                               schedule, window)
            ms[name] += [s["ms_per_frame"] for s in stats[1:]]
    for name, times in ms.items():
        results[f"fps_{name}"] = 1000 / float(np.mean(times))
        results[f"fps_{name}_median_frame"] = 1000 / float(np.median(times))
    results["threads"] = torch.get_num_threads()
    results["machine"] = machine()
    results["speed_sampling"] = str(Sampling.model_default(model.config))
    ids = tokenizer.encode(frames[:1])
    tokenizer.decode(ids)
    started = time.perf_counter()
    for _ in range(20):
        tokenizer.decode(ids)
    results["tokenizer_decode_ms"] = (time.perf_counter() - started) / 20 * 1000
    return results


def evaluate(model, tokenizer, cases: int = EVAL_WORLDS, strip_path=None,
             long_frames: int = 64, schedule: str = "diagonal", clips: list[Path] = (),
             control_starts: int = CONTROL_STARTS, controls_strip: Path | None = None) -> dict:
    """The model card's numbers but its speed (see ``speed``), against frames rendered by the
    world (held-out seeds).

    Rollouts decode with ``schedule``: diagonal by default, as the app plays, and because naive
    decoding of every rollout takes several times longer on a CPU."""
    from mineworld.controls import measure_controls
    from mineworld.decoding import Sampling

    window = model.config.diagonal_window  # the Session's default, as the app plays
    shown = f"{schedule}, window {window}" if schedule == "diagonal" else schedule
    results = {"rollout_schedule": shown, "diagonal_window": window, "cases": cases,
               "sampling": str(Sampling.model_default(model.config))}
    data = eval_cases(cases)
    truth_all = np.concatenate([f for *_, f in data])
    results["tokenizer_psnr_db"] = psnr(tokenizer.decode(tokenizer.encode(truth_all)), truth_all)
    results |= teacher_forcing(model, tokenizer, data)
    results |= rollout_scores(model, tokenizer, data, schedule, strip_path)
    results |= near_miss_scores(tokenizer, data)
    results |= action_following(model, tokenizer, data, schedule)
    # Each control against no action, from many start points, greedy and as shipped; the strip
    # shows the model as it plays (the last decoding).
    measured = decodings(model.config)
    played = list(measured)[-1]
    results["controls"] = {
        name: measure_controls(model, tokenizer, control_starts, CONTEXT, sampling, schedule,
                               strip_path=controls_strip if name == played else None)
        for name, sampling in measured.items()}
    results["structure"] = {name: long_rollout_structure(model, tokenizer, clips, sampling,
                                                         schedule)
                            for name, sampling in measured.items()}
    return results | single_colour_frames(model, tokenizer, schedule, long_frames)


# -- assets ------------------------------------------------------------------------------------


# How the embedded model decodes by default (its config's decoding section). Window 1: each
# row one token behind the row above, 21 forward passes a frame instead of 26 (window 2), for
# 0.2 dB of rollout PSNR. Greedy, each code's odds lowered by how much the session's history
# overuses it: plain greedy froze in 79 % of the frames where the view moves; sampling
# (temperature 0.7, top-k 20) followed the controls a little more often (79 against 74 %) but
# its picture turned to white haze when walking into a wall and turning (the scene kept in 76 %
# of the frames against 96 %), and greedy makes every rollout repeatable: Compare's sides differ
# by their caches alone (python -m benchmarks.decodings, python -m mineworld.controls --walls 32,
# docs/embedded-model.md).
DECODING = {"diagonal_window": 1, "temperature": 0.0, "top_k": 0, "overuse_penalty": 1.0}
# What --self-feed-sampled draws the fed frames with: the sampling the model once shipped.
SAMPLED_FEED = Sampling(0.7, top_k=20)


def model_config(codebook_size: int, grid: tuple[int, int], smoke: bool = False):
    from mineworld.config import ACTION_TOKENS, ModelConfig

    frame_tokens = grid[0] * grid[1] + ACTION_TOKENS
    # Sized for a 2-core CPU: compute, not data, bounds what trains in the budget.
    return ModelConfig(
        vocab_size=codebook_size + 70,
        hidden_size=32 if smoke else 192,
        intermediate_size=64 if smoke else 512,
        num_hidden_layers=1 if smoke else 4,
        num_attention_heads=2 if smoke else 6,
        num_key_value_heads=1 if smoke else 2,
        max_position_embeddings=(CONTEXT + 1 if smoke else 8) * frame_tokens,
        image_rows=grid[0], image_cols=grid[1], codebook_size=codebook_size, **DECODING,
    )


def write_config(config, path: Path) -> None:
    """config.yaml in the published layout; the tokenizer is named by its files beside it."""
    import yaml

    from mineworld.tokenizers.embedded import CONFIG_TARGET

    params = {
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "float32",
    }  # fmt: skip
    document = {"model": {"target": "lvm.LlamaLVM", "params": {
        "model_class": "lvm.LlamaForCausalLM",
        "tokenizer_config": {
            "target": CONFIG_TARGET,
            "params": {"config_path": "tokenizer.json", "ckpt_path": "tokenizer.safetensors"},
        },
        "transformer_config": {"target": "transformers.LlamaConfig", "params": params},
        "layout": {"image_rows": config.image_rows, "image_cols": config.image_cols,
                   "codebook_size": config.codebook_size},
        "decoding": {"diagonal_window": config.diagonal_window,
                     "temperature": config.temperature, "top_k": config.top_k,
                     "repeat_penalty": config.repeat_penalty,
                     "overuse_penalty": config.overuse_penalty},
    }}}  # fmt: skip
    header = "# The embedded MineWorld model, written by `python -m mineworld.train`.\n"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))


def write_validation_clips(folder: Path, smoke: bool = False) -> None:
    """Held-out worlds recorded as VPT files, long enough for 100-frame rollouts after a
    MineWorld-sized context (``inference.py --frames 100 --demo_num 10``)."""
    from mineworld.world import record_episode

    count, frames = (1, 12) if smoke else (4, VALIDATION_FRAMES)
    for i in range(count):
        seed = HELD_OUT_SEED_BASE + 500 + i
        record_episode(seed, scripted_actions(seed, frames), folder / "validation" / f"clip_{i}")


def write_clips(folder: Path, smoke: bool) -> None:
    """The demo scene and the validation clips: held-out worlds, recorded as VPT files."""
    from mineworld.world import record_episode

    write_validation_clips(folder, smoke)
    seed = HELD_OUT_SEED_BASE + 600
    record_episode(seed, scripted_actions(seed, 16 if smoke else 300), folder / "scene" / "scene")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mineworld.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps of every stage on tiny data, into a temp dir")
    parser.add_argument("--out", type=Path, help="assets folder (default: assets/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, help="training frames to render (default 100,000; "
                        "with --resume, the worlds of the log, or more worlds if this asks more)")
    parser.add_argument("--minutes", type=float, nargs=3, default=(24.0, 26.0, 55.0),
                        metavar=("DATA", "TOKENIZER", "MODEL"), help="budget per stage")
    parser.add_argument("--tokenizer-steps", type=int, default=4500)
    parser.add_argument("--model-steps", type=int, default=2400)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="re-measure the model in --out and rewrite its card")
    parser.add_argument("--keep-speed", action="store_true",
                        help="with --evaluate-only: keep the speed figures of the last "
                        "evaluation in training_log.json (same weights) instead of measuring "
                        "on this machine, for a re-evaluation on a busy host; the card says so")
    parser.add_argument("--speed-only", action="store_true",
                        help="with --evaluate-only: measure the speed figures alone and keep the "
                        "other figures of the last evaluation in training_log.json (same "
                        "weights), for the speed of an idle host after a re-evaluation on a "
                        "busy one")
    parser.add_argument("--resume", action="store_true",
                        help="train the model in --out further on the worlds its "
                        "training_log.json names: its tokenizer's decoder (TOKENIZER minutes, "
                        "--tokenizer-steps, --decoder-lr; the encoder and so the codes stay), "
                        "then the world model (MODEL minutes, --model-steps, --lr); 0 minutes "
                        "skips a stage (DATA 0: no new worlds, the cached ones are read)")
    parser.add_argument("--refine", type=int, nargs=2, metavar=("CHANNELS", "BLOCKS"),
                        help="give the tokenizer's decoder a full-size refinement stage; with "
                        "--resume it is added to the trained decoder and starts as the identity "
                        "(the shipped one: 32 2)")
    parser.add_argument("--mlp-width", type=positive_int, metavar="UNITS",
                        help="with --resume: widen each MLP of the world model to UNITS first, "
                        "starting as the model it was (see widen_mlp)")
    parser.add_argument("--decoder-lr", type=float, default=5e-4,
                        help="peak LR of the decoder when resuming")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="world model's peak LR")
    parser.add_argument("--self-feed", type=float, default=0.5, metavar="SHARE",
                        help="share of the frames in a training window fed as the model's own "
                        "predictions (parallel scheduled sampling), in [0, 1]; 0 trains on true "
                        "frames alone")
    parser.add_argument("--self-feed-sampled", action="store_true",
                        help="draw the fed predictions at temperature 0.7, top-k 20 instead of "
                        "taking the likeliest code (on the embedded model it smoothed motion away: "
                        "docs/embedded-model.md)")
    parser.add_argument("--self-feed-passes", type=positive_int, default=1, metavar="N",
                        help="passes that make the fed predictions: the first from the true "
                        "frames, each further one from the frames the last fed, so that a fed "
                        "frame after fed ones is made from the model's own, as in a rollout "
                        "(>= 1; each costs a forward pass of the window)")
    parser.add_argument("--change-weight", type=float, default=1.0, metavar="W",
                        help="loss weight of image tokens whose code differs from the frame "
                        "before (1: plain cross-entropy), >= 1")
    parser.add_argument("--digit-weight", type=float, default=0.0, metavar="W",
                        help="weight of a second loss on each FSQ digit of the true code (see "
                        "digit_loss: an unsure cell's odds go to codes that draw alike), >= 0; "
                        "0: plain cross-entropy")
    parser.add_argument("--rare-controls", type=float, default=0.0, metavar="BOOST",
                        help="train on windows where the play holds a rare control (back, "
                        "strafe, jump, sneak) more often: a window's odds are 1 + BOOST x the "
                        "share of its actions holding one; 0: every window alike")
    parser.add_argument("--schedule", choices=("naive", "diagonal"), default="diagonal",
                        help="how evaluation rollouts decode")
    parser.add_argument("--bf16", action="store_true",
                        help="train the tokenizer and world model in bf16 autocast (fast on "
                        "CPUs with AMX or AVX512-BF16, slow on others)")
    parser.add_argument("--tokenizer-threads", type=int, default=1,
                        help="torch threads while the tokenizer trains: its small convolutions "
                        "ran 1.5x faster on one thread than on two on a 2-core Xeon")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the world model and the evaluation (the shipped "
                        "model: 2, on an idle 2-core machine; 1 when it is shared)")
    args = parser.parse_args(argv)
    if not 0 <= args.self_feed <= 1:
        parser.error(f"--self-feed must be in [0, 1], got {args.self_feed}")
    if args.change_weight < 1:
        parser.error(f"--change-weight must be >= 1, got {args.change_weight}")
    if args.digit_weight < 0:
        parser.error(f"--digit-weight must be >= 0, got {args.digit_weight}")
    if args.rare_controls < 0:
        parser.error(f"--rare-controls must be >= 0, got {args.rare_controls}")
    if args.mlp_width and not args.resume:
        parser.error("--mlp-width widens a trained model: it goes with --resume")
    if args.keep_speed and not args.evaluate_only:
        parser.error("--keep-speed goes with --evaluate-only (training changes the weights)")
    if args.speed_only and not args.evaluate_only:
        parser.error("--speed-only goes with --evaluate-only (training changes the weights)")
    if args.speed_only and args.keep_speed:
        parser.error("--speed-only measures the speed that --keep-speed keeps: choose one")
    return args


def main(argv: list[str] | None = None) -> None:
    """Render worlds, train the tokenizer, then the world model, and evaluate (see --help)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        out = Path(args.out or tempfile.mkdtemp(prefix="mineworld-smoke-"))
        cache = out / "data"
    else:
        out = args.out or ROOT / "assets"
        cache = (ROOT / "data" / f"episodes_{FRAME_SIZE[0]}x{FRAME_SIZE[1]}_ss{SUPERSAMPLE}"
                 f"_play{play_digest()}")
    log: dict = {"seed": args.seed}
    if args.evaluate_only:
        evaluate_and_write(out, log, args.smoke, args.schedule, args.keep_speed,
                           args.speed_only)
        return

    from mineworld.checkpoint import save_transformer
    from mineworld.embedded import load_embedded

    model_dir = out / "model"
    model = tokenizer = None
    if args.resume:
        model, tokenizer = load_embedded(model_dir=model_dir)
        log = json.loads((out / "training_log.json").read_text())
        seed = log["seed"]  # the same worlds as before, and new ones if --frames asks for more
        episodes = max(log["train_episodes"], (args.frames or 0) // EPISODE_FRAMES)
    else:
        episodes = 2 if args.smoke else max(1, (args.frames or 100_000) // EPISODE_FRAMES)
        seed = args.seed
    length = 24 if args.smoke else EPISODE_FRAMES
    seeds = [TRAIN_SEED_BASE + seed * 1000 + i for i in range(episodes)]
    stems = world_stage(seeds, length, cache, args.minutes[0], log)
    torch.set_num_threads(args.tokenizer_threads)
    tokenizer = tokenizer_stage(args, stems, tokenizer, seed, log, model_dir)
    torch.set_num_threads(args.threads)
    if args.resume and args.minutes[2] <= 0:  # no world-model stage: nothing to tokenize
        evaluate_and_write(out, log, args.smoke, args.schedule)
        return
    model, config = world_model_stage(args, stems, length, cache, tokenizer, model, log)
    write_config(config, model_dir / "config.yaml")
    save_transformer(model, model_dir / "model.safetensors")
    if not args.resume:
        write_clips(out, args.smoke)
    evaluate_and_write(out, log, args.smoke, args.schedule)


def world_stage(seeds: list[int], length: int, cache: Path, minutes: float,
                log: dict) -> list[Path]:
    """The training worlds (rendered, or read from ``cache``); ``log`` notes what they cost.
    A resumed run's worlds were rendered before, unless the scripted play has changed."""
    started = time.time()
    stems, rendered = generate_data(seeds, length, cache, minutes)
    same_play = log.get("play") == play_digest()
    known = log.get("train_episodes", 0) if same_play else 0
    if len(stems) != known:  # a resumed run's minutes add to the first's
        before = (log.get("data_minutes", 0), log.get("cached_episodes", 0)) if same_play else (
            0, 0)
        # Worlds another run left in the cache cost this run nothing: the card says so.
        log.update(play=play_digest(), train_frames=len(stems) * length,
                   train_episodes=len(stems),
                   data_minutes=before[0] + (time.time() - started) / 60,
                   cached_episodes=before[1] + len(stems) - known - rendered)
    return stems


def tokenizer_stage(args: argparse.Namespace, stems: list[Path], tokenizer, seed: int,
                    log: dict, model_dir: Path):
    """A new tokenizer, or with --resume the given one's decoder trained further (the codes
    the world model knows stay); saved in ``model_dir`` when trained. 0 minutes on a resumed
    run keeps ``tokenizer`` as it is."""
    from mineworld.tokenizers.embedded import FSQAutoencoder, TokenizerConfig

    steps = 3 if args.smoke else args.tokenizer_steps
    refine = (dict(refine_channels=args.refine[0], refine_blocks=args.refine[1])
              if args.refine else {})
    if not args.resume:
        frames = load_frames(stems)
        log.update(tokenizer_frames=len(frames))
        config = TokenizerConfig(channels=8, levels=(4, 4), **refine) if args.smoke else (
            TokenizerConfig(channels=64, **refine))
        tokenizer = train_tokenizer(frames, config, args.minutes[1], steps, args.seed, log,
                                    bf16=args.bf16)
    elif args.minutes[1] > 0:
        config, autoencoder = tokenizer.config, tokenizer.model
        if refine:  # the trained weights, and a refinement that starts as the identity
            config = dataclasses.replace(config, **refine)
            autoencoder = FSQAutoencoder(config)
            autoencoder.load_state_dict(tokenizer.model.state_dict(), strict=False)
        tokenizer = train_tokenizer(load_frames(stems), config, args.minutes[1], steps, seed,
                                    log, model=autoencoder, lr=args.decoder_lr, bf16=args.bf16)
    else:
        return tokenizer
    tokenizer.save(model_dir)
    return tokenizer


def world_model_stage(args: argparse.Namespace, stems: list[Path], length: int, cache: Path,
                      tokenizer, model, log: dict):
    """(the world model trained on ``stems``' tokens, its config): a new one, or ``model``
    trained further with --resume (the shipped decoding settings written either way)."""
    from mineworld.actions import ActionCodec

    codec = ActionCodec(offset=tokenizer.codebook_size)
    tokens = tokenize_episodes(tokenizer, stems, codec)
    if model is not None and args.mlp_width:
        model = widen_mlp(model, args.mlp_width)
    config = dataclasses.replace(model.config, **DECODING) if model else model_config(
        tokenizer.codebook_size, tokenizer.grid, args.smoke)
    holdout = None if args.smoke else tokenize_episodes(
        tokenizer, generate_data([HELD_OUT_SEED_BASE + 300], length, cache, 5)[0], codec)
    steps_before = log.get("world_model_steps", 0)
    log.update(precision="bf16 autocast" if args.bf16 else "fp32", threads=args.threads)
    model = train_world_model(config, tokens, args.minutes[2],
                              3 if args.smoke else args.model_steps, args.seed, log,
                              batch=2 if args.smoke else 4, lr=args.lr, holdout=holdout,
                              model=model, bf16=args.bf16, self_feed=args.self_feed,
                              change_weight=args.change_weight,
                              windows=window_sampler(stems, config.context_frames,
                                                     args.rare_controls),
                              self_feed_sampling=SAMPLED_FEED if args.self_feed_sampled else None,
                              self_feed_passes=args.self_feed_passes,
                              digit_weight=args.digit_weight, levels=tokenizer.config.levels)
    if args.resume:
        log.setdefault("resumed", []).append(
            {"steps": log["world_model_steps"] - steps_before, "peak_lr": args.lr,
             "self_feed": args.self_feed, "self_feed_sampled": args.self_feed_sampled,
             "self_feed_passes": args.self_feed_passes,
             "change_weight": args.change_weight,
             "rare_controls": args.rare_controls, "play": play_digest(),
             **({"digit_weight": args.digit_weight} if args.digit_weight else {}),
             **({"mlp_width": args.mlp_width} if args.mlp_width else {})})
    return model, config


def evaluate_and_write(out: Path, log: dict, smoke: bool, schedule: str = "diagonal",
                       keep_speed: bool = False, speed_only: bool = False) -> None:
    """Evaluate the model in ``out``, print the results, write the card, strip and log;
    ``keep_speed``: the speed figures of the log's last evaluation instead of new ones;
    ``speed_only``: new speed figures beside the last evaluation's others (strips unchanged)."""
    from mineworld.card import model_card
    from mineworld.embedded import demo_scene, load_embedded, validation_clips

    log_path = out / "training_log.json"
    if log_path.exists() and "train_frames" not in log:  # --evaluate-only keeps training facts
        log = {**json.loads(log_path.read_text()), **log}
    for flag, asked in (("--keep-speed", keep_speed), ("--speed-only", speed_only)):
        if asked and "evaluation" not in log:
            raise SystemExit(f"{flag}: {log_path} holds no evaluation to keep figures of")
    model, tokenizer = load_embedded(model_dir=out / "model")
    previous = log.get("evaluation", {})
    if speed_only:
        results = {name: value for name, value in previous.items()
                   if name not in SPEED_FIELDS and name != "speed_kept"}
    else:
        results = evaluate(model, tokenizer, cases=1 if smoke else EVAL_WORLDS,
                           strip_path=out / "strip.png", long_frames=4 if smoke else 64,
                           schedule=schedule, clips=validation_clips(out / "validation"),
                           control_starts=1 if smoke else CONTROL_STARTS,
                           controls_strip=out / "controls.png")
    if keep_speed:
        # Older logs name the speed's decoding only as the evaluation's.
        kept = {"speed_sampling": previous["sampling"]} | previous
        results |= {name: kept[name] for name in SPEED_FIELDS if name in kept}
        results["speed_kept"] = True
    else:
        results |= speed(model, tokenizer, eval_cases(1)[0], SPEED_ROUNDS if smoke else 40)
    scene, _ = demo_scene(out / "scene" / "scene")
    scene = scene[:16]  # what tests/test_embedded.py re-measures
    results["scene_tokenizer_psnr_db"] = psnr(tokenizer.decode(tokenizer.encode(scene)), scene)
    log["evaluation"] = results
    print(json.dumps(results, indent=1))
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(results, log, model.config, tokenizer))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
