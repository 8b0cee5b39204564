"""KCL and TSC: k-positive contrastive learning (Kang et al., ICLR 2021) and targeted supervised
contrastive learning (Li et al., CVPR 2022), as released in LTH14/targeted-supcon@c4f15eb.

Both learn a representation (backbone + projection head, normalised z) and then train a classifier
on the frozen backbone, so each is a chain of runs in the DAG:

    kcl:  kcl_repr -> kcl (the classifier stage; the table row)
    tsc:  tsc_warmup (KCL, first half) -> tsc_assign -> tsc_repr (TSC, second half) -> tsc

The official TSC code (main_moco_supcon_imba.py, `--targeted`) trains the first half of the epochs
with the KCL loss only, then re-creates the optimiser and restarts the schedule for the TSC half;
here the halves are two runs, the second initialised from the first one's last checkpoint
(backbone, head and, at scale, key encoder and queue). Each half's recipe has half the epochs,
so a preset's `epoch_scale` keeps the split; an absolute `epochs` applies to each run as given.

Representation loss
- CIFAR (cifar_dirty/main_supcon_imba.py, tsc_cifar_loss.py): SupCon over two SimAugment views
  (RandomResizedCrop scale (0.2, 1)), both views through the encoder as one batch, temperature
  0.07 (code default; the supplement does not say), K = 6 sampled positives (`contrastive.supcon`
  with k). TSC appends each class's assigned target, repeated `target_repeat` = 25 times, to both
  views as labelled rows: anchors, positives of their class, negatives of every other.
  The CIFAR code has no target weight; `target_weight` = 1 keeps it so.
- ImageNet-LT / iNat (moco/builder.py): MoCo v2, query = view 1, key = view 2 through a momentum
  (0.999) key encoder, a queue of 65,536 labelled keys; `moco.kcl_moco_loss` with K = 6 and, for
  TSC, tr = 1 target column per class with weight tw = 0.2.

Targets come from the DAG (`tsc_targets`, `targets.generate_targets`); `assignment` says which
class gets which target:
- static: Hungarian assignment (`targets.hungarian_assign`) of the warm-up checkpoint's class
  centroids (normalised z of the training images, no augmentation) to the targets, made once by
  the DAG's `tsc_assign`. The CIFAR default; a deviation from both official codes.
- fixed: the official CIFAR label order (CIFAR-10 [4,8,3,1,9,5,2,7,0,6], CIFAR-100 identity).
  The official target files are not in the repository (issue #1), so with our targets this
  reproduces the mechanism, not the exact geometry; a regular simplex looks the same under any
  order, so for C <= dim + 1 nothing is lost.
- online: every step, EMA class centroids (momentum 0.9, random at the start of the TSC half,
  updated only there) are assigned by the Hungarian algorithm; the official ImageNet/iNat
  behaviour and the default of those families.
The assignment is logged each epoch: `assign_changed` (classes whose target changed during the
epoch) and `assign_cos` (mean centroid-target cosine) as metrics, the permutation itself as a
JSON artifact `tsc_assignment_eNNNN.json`.

Classifier stage (kcl, tsc): the backbone is frozen (eval mode, out of the optimiser), a new head
is trained on the "standard" view. CIFAR (supplement, Appendix A): LDAM loss with class
re-weighting, which switches on at the first lr decay as DRW does (`drw_start` 0.7), cosine head
(LDAM's), 200 epochs, batch 128, lr 0.1, x0.1 after 140, 180, 190. ImageNet-LT / iNat
(main_lincls_imba.py): linear head N(0, 0.01), CE, class-aware sampler, 40 epochs, batch 2048,
lr 10 / 30, x0.1 after 20 and 30, no weight decay.

The representation runs report nearest-centroid accuracy (cosine to the EMA class centroids) as
their val/test numbers, to watch training; only the classifier stages go in the tables.

Deliberate deviations
- CIFAR schedule: ltbench's linear warm-up over 10 epochs to the full rate, then cosine to 0;
  SupContrast warms from 0.01 per step to the cosine value at epoch 10 and ends at lr * 1e-3.
- The backbone is ltbench's (Kaiming-normal init); SupConResNet_s keeps PyTorch's default init.
- The split into two runs means the second half re-draws its data order from its own seed.
- At scale: no DDP batch shuffle for the key encoder's BatchNorm (see `ltbench.moco`); views are
  ltbench's SimAugment (the official ImageNet view is RandomResizedCrop + flip + ColorJitter
  (0.4, 0.4, 0.4, 0) without grayscale); the classifier stage keeps BatchNorm in eval mode, where
  main_lincls_imba.py leaves the model in train mode despite its comment.
- The loss of the classifier stage on CIFAR: the supplement names "LDAM loss + class
  re-weighting" without code; margins, s = 30 and beta = 0.9999 are LDAM-DRW's, the weight decay
  2e-4 is LDAM's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ltbench import contrastive, losses, moco, targets
from ltbench.methods import register
from ltbench.methods.base import Method
from ltbench.methods.ldam_drw import LDAMDRW
from ltbench.models import heads

# SupContrast with batch 1024 warms up over 10 epochs (cifar_dirty/main_supcon_imba.py, `--warm`)
SUPCON_CIFAR = dict(epochs=1000, batch_size=1024, lr=0.5, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                    warmup_epochs=10)
MOCO_LARGE = dict(epochs=200, batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                  warmup_epochs=0, drop_last=True)
PROBE_CIFAR = dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="step",
                   warmup_epochs=0, milestones=(140, 180, 190), lr_factors=(0.1, 0.01, 0.001))
PROBE_LARGE = dict(epochs=40, batch_size=2048, momentum=0.9, weight_decay=0.0, schedule="step",
                   warmup_epochs=0, milestones=(20, 30), lr_factors=(0.1, 0.01))

CIFAR10_LABEL_ORDER = (4, 8, 3, 1, 9, 5, 2, 7, 0, 6)   # cifar_dirty/main_supcon_imba.py: target row i -> class
ASSIGNMENTS = ("static", "fixed", "online")
# What a TSC hyper-parameter left at None means, per dataset family (CIFAR code / MoCo code)
FAMILY_TSC = {"cifar": dict(assignment="static", target_repeat=25, target_weight=1.0),
              "imagenet": dict(assignment="online", target_repeat=1, target_weight=0.2),
              "inat": dict(assignment="online", target_repeat=1, target_weight=0.2)}


def half(recipe):
    return dict(recipe, epochs=recipe["epochs"] // 2)


def tsc_settings(params, family):
    """assignment, target_repeat, target_weight: the given values, None meaning the family's official one."""
    out = {k: (v if params.get(k) is None else params[k]) for k, v in FAMILY_TSC[family].items()}
    if out["assignment"] not in ASSIGNMENTS:
        raise ValueError(f"tsc: assignment {out['assignment']!r} is not one of {', '.join(ASSIGNMENTS)}")
    return out


def fixed_assignment(num_classes):
    """perm[class] = its target row in the official CIFAR code: CIFAR-10 row i is class
    CIFAR10_LABEL_ORDER[i]; CIFAR-100 is the identity."""
    if num_classes == 10:
        return np.argsort(CIFAR10_LABEL_ORDER)
    if num_classes == 100:
        return np.arange(100)
    raise ValueError(f"tsc: assignment 'fixed' is the official CIFAR-10/100 label order, defined for 10 or 100 "
                     f"classes, not {num_classes}; use assignment static or online")


def load_targets(path, num_classes, dim):
    if not path:
        raise ValueError("tsc: targets_path is empty; the DAG's tsc_targets rule makes it "
                         "(by hand: ltbench targets --classes C --dim D --out c{C}_d{D}.npy --checks c{C}_d{D}.json)")
    if not Path(path).exists():
        raise FileNotFoundError(f"tsc: targets file {path} does not exist; make it with `ltbench targets`")
    U = np.load(path)
    if U.shape != (num_classes, dim):
        raise ValueError(f"tsc: targets {path} have shape {U.shape}, expected ({num_classes}, {dim}) = "
                         f"(classes, feat_dim); regenerate with ltbench targets --classes {num_classes} --dim {dim}")
    return torch.as_tensor(U, dtype=torch.float32)


def load_assignment(path, num_classes):
    if not path:
        raise ValueError("tsc: assignment 'static' needs assignment_path, the DAG's tsc_assign output "
                         "(by hand: ltbench assign --checkpoint <warm-up>/ckpt/last.pt ...)")
    if not Path(path).exists():
        raise FileNotFoundError(f"tsc: assignment file {path} does not exist; make it with `ltbench assign`")
    perm = json.loads(Path(path).read_text())["assignment"]
    if sorted(perm) != list(range(num_classes)):
        raise ValueError(f"tsc: {path} does not hold a permutation of the {num_classes} classes; rerun ltbench assign")
    return np.asarray(perm)


@torch.no_grad()
def centroid_assignment(model, data, U, batch_size=1024):
    """The static assignment: class centroids of the model's normalised projections of the
    training images, without augmentation, matched to the targets U by the Hungarian algorithm.
    Returns (perm, info) with perm[class] = target row."""
    model.eval()
    n = len(data.train_y)
    slices = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    batches = data.train_batches(torch.arange(n), slices, ("plain",), torch.Generator(device=data.device), model.cfg, 0)
    z, y = zip(*((model.embed(views[0]).double(), yb) for views, yb in batches))
    centroids = targets.class_centroids(torch.cat(z), torch.cat(y), data.info.num_classes).cpu().numpy()
    perm = targets.hungarian_assign(centroids, U)
    cos = centroids @ (U / np.linalg.norm(U, axis=1, keepdims=True)).T
    assigned = cos[np.arange(len(perm)), perm]
    return perm, {"assigned_cos": assigned.tolist(), "mean_cos": float(assigned.mean()),
                  "identity_mean_cos": float(np.diag(cos).mean())}


class Representation(Method):
    """Backbone + projection head (d -> d -> ReLU -> feat_dim, no BatchNorm: SupConResNet_s and the
    MoCo v2 head) trained by KCL; `target_rows` adds TSC's targets. No classifier."""
    defaults = {"temperature": 0.07, "feat_dim": 128, "k": 6, "queue_size": 65536, "key_momentum": 0.999}
    recipes = {"cifar": SUPCON_CIFAR, "imagenet": MOCO_LARGE, "inat": MOCO_LARGE}

    @property
    def views(self):
        return ("simaugment_s02",) * 2 if self.cfg.family == "cifar" else ("simaugment",) * 2

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        del self.fc
        d, dim = self.encoder.out_dim, self.p["feat_dim"]
        self.head = heads.mlp(d, d, dim, bn=False)
        self.register_buffer("centroids", F.normalize(torch.randn(info.num_classes, dim), dim=1))
        self.moco = cfg.family != "cifar"
        if self.moco:
            self.key = moco.KeyEncoder(self.encoder, self.head, dim, self.p["queue_size"], self.p["key_momentum"])

    def embed(self, x):
        """Normalised projection z: the space the targets live in."""
        return F.normalize(self.head(self.encoder(x)), dim=1)

    def forward(self, x):
        """Nearest-centroid logits (cosine to the EMA class centroids / temperature), to watch training."""
        return self.embed(x) @ self.centroids.T / self.p["temperature"]

    def param_groups(self):
        return [p for p in self.parameters() if p.requires_grad]

    def observe(self, z, y):
        """Called with each step's detached projections before the loss."""
        self.centroids = targets.ema_update(self.centroids, z, y)

    def target_rows(self):
        """(targets, labels, weight) appended to the contrast, or None (KCL)."""
        return None

    def loss(self, views, y, step):
        if self.moco:
            q = self.embed(views[0]).float()
            self.key.follow(self.encoder, self.head)
            keys = self.key.keys(views[1]).float()
            self.observe(q.detach(), y)
            with torch.autocast(q.device.type, enabled=False):   # logits / 0.07 need float32
                loss = self.moco_loss(q, keys, y, step)
            self.key.enqueue(keys, y)
            return loss
        z = self.embed(torch.cat(views)).float()
        self.observe(z.detach(), y.repeat(len(views)))
        with torch.autocast(z.device.type, enabled=False):
            return self.supcon_loss(z.view(len(views), len(y), -1).transpose(0, 1), y, step)

    def supcon_loss(self, features, y, step):
        t = self.target_rows()
        extra = dict(extra=t[0], extra_labels=t[1], extra_weight=t[2]) if t else {}
        return contrastive.supcon(features, y, self.p["temperature"], k=self.p["k"], generator=step.generator, **extra)

    def moco_loss(self, q, keys, y, step):
        t = self.target_rows()
        extra = dict(targets=t[0], target_labels=t[1], target_weight=t[2]) if t else {}
        # the queue is changed in place after the loss, before backward: contrast a copy
        return moco.kcl_moco_loss(q, keys, y, self.key.queue.clone(), self.key.queue_labels, self.p["temperature"],
                                  self.p["k"], step.generator, **extra)


@register("kcl_repr")
class KCLRepr(Representation):
    """KCL representation, the whole schedule (1000 epochs on CIFAR, 200 at scale)."""


@register("tsc_warmup")
class TSCWarmup(Representation):
    """The KCL first half of TSC's schedule (500 epochs on CIFAR, 200 at scale)."""
    recipes = {"cifar": half(SUPCON_CIFAR), "imagenet": MOCO_LARGE, "inat": MOCO_LARGE}


@register("tsc_repr")
class TSCRepr(Representation):
    """The TSC second half, initialised from `tsc_warmup` with a fresh optimiser and schedule."""
    stage1 = "tsc_warmup"
    recipes = TSCWarmup.recipes
    defaults = {**Representation.defaults, "assignment": None, "target_repeat": None, "target_weight": None,
                "targets_path": "", "assignment_path": ""}

    @classmethod
    def dag_inputs(cls, params, family):
        """Hyper-parameter -> the DAG rule whose file it names (see workflow/rules/targets.smk)."""
        files = {"targets_path": "tsc_targets"}
        if tsc_settings(params, family)["assignment"] == "static":
            files["assignment_path"] = "tsc_assign"
        return files

    def __init__(self, cfg, info):
        if not cfg.init_from:
            raise ValueError("tsc_repr continues a KCL warm-up: set init_from=<tsc_warmup run>/ckpt/last.pt "
                             "(the DAG does)")
        super().__init__(cfg, info)
        self.tsc = tsc_settings(self.p, cfg.family)
        C = info.num_classes
        self.register_buffer("targets", load_targets(self.p["targets_path"], C, self.p["feat_dim"]))
        mode = self.tsc["assignment"]
        perm = (load_assignment(self.p["assignment_path"], C) if mode == "static" else
                fixed_assignment(C) if mode == "fixed" else np.arange(C))   # online: replaced at the first step
        self.register_buffer("assignment", torch.as_tensor(perm, dtype=torch.long))
        self.epoch_start_assignment = self.assignment.clone()

    def load_stage1(self, state_dict):
        """Everything of the warm-up but the centroids, which restart at random as in the official TSC half."""
        fresh = ("centroids", "targets", "assignment")
        wanted = [k for k in self.state_dict() if k not in fresh]
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise ValueError(f"tsc_repr: the warm-up checkpoint lacks {missing[:4]}: init_from must be a KCL "
                             "representation run (tsc_warmup) of the same backbone, feat_dim and family")
        self.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)

    def start_epoch(self, epoch, epochs):
        self.epoch_start_assignment = self.assignment.clone()

    def observe(self, z, y):
        super().observe(z, y)
        if self.tsc["assignment"] == "online":
            perm = targets.hungarian_assign(self.centroids, self.targets)
            self.assignment.copy_(torch.as_tensor(perm))

    def target_rows(self):
        r = self.tsc["target_repeat"]
        labels = torch.arange(len(self.targets), device=self.targets.device)
        return (self.targets[self.assignment].repeat_interleave(r, 0), labels.repeat_interleave(r),
                self.tsc["target_weight"])

    def epoch_log(self):
        cos = (self.centroids * self.targets[self.assignment]).sum(1)
        changed = (self.assignment != self.epoch_start_assignment.to(self.assignment.device)).sum()
        return {"assign_changed": float(changed), "assign_cos": float(cos.mean())}

    def epoch_artifacts(self):
        """Per-epoch JSON artifacts (written and logged by the trainer)."""
        return {"tsc_assignment": {"mode": self.tsc["assignment"], "assignment": self.assignment.tolist()}}


class LinearProbe(LDAMDRW):
    """A classifier on the frozen backbone of a representation run (`stage1`)."""
    defaults = {**LDAMDRW.defaults, "drw_start": 0.7}
    recipes = {"cifar": PROBE_CIFAR, "imagenet": dict(PROBE_LARGE, lr=10.0), "inat": dict(PROBE_LARGE, lr=30.0)}

    @property
    def classifier(self):
        return "cosine" if self.cfg.family == "cifar" else "linear"

    @property
    def sampler(self):
        return "instance" if self.cfg.family == "cifar" else "class_balanced"

    def __init__(self, cfg, info):
        if not cfg.init_from:
            raise ValueError(f"{self.name} trains a classifier on a frozen {self.stage1} backbone: set "
                             f"init_from=<{self.stage1} run>/ckpt/last.pt (the DAG does)")
        super().__init__(cfg, info)
        self.encoder.requires_grad_(False).eval()
        if cfg.family != "cifar":
            torch.nn.init.normal_(self.fc.weight, std=0.01)
            torch.nn.init.zeros_(self.fc.bias)

    def train(self, mode=True):
        super().train(mode)
        self.encoder.eval()    # frozen means BatchNorm statistics too
        return self

    def param_groups(self):
        return list(self.fc.parameters())

    def loss(self, views, y, step):
        if self.cfg.family == "cifar":
            return super().loss(views, y, step)
        return losses.cross_entropy(self(views[0]), y)

    def epoch_log(self):
        return super().epoch_log() if self.cfg.family == "cifar" else {}


@register("kcl")
class KCL(LinearProbe):
    stage1 = "kcl_repr"


@register("tsc")
class TSC(LinearProbe):
    stage1 = "tsc_repr"
