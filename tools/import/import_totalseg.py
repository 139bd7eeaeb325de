#!/usr/bin/env python3
"""Import a TotalSegmentator task from the weights TotalSegmentator downloaded
as ONE segpipe task package (docs/model-format.md, "Task packages").

  tools/import/import_totalseg.py [TOTALSEG_HOME] -o PKG [--task total] [--fast | --fastest]
                                  [--no-crop-model] [--fp16] [--model-size small]

TOTALSEG_HOME is TotalSegmentator's home folder (default: $TOTALSEG_HOME_DIR,
else ~/.totalsegmentator); the weights are read where TotalSegmentator reads
them: TOTALSEG_HOME/nnunet/results (or $TOTALSEG_WEIGHTS_PATH, or --weights),
one folder per nnU-Net dataset, `DatasetNNN_*/<trainer>__<plans>__<model>/fold_0/
checkpoint_final.pth`. Task ids, trainers, plans ("nnUNetPlans"), model
("3d_fullres"), fold 0 and the resampling come from TotalSegmentator's task
configuration (map_tasks_config.py), the class maps from its map_to_binary.py,
both as copied into tools/import/totalseg_maps.json by tools/dev/totalseg_maps.py
(with the commit they came from).

`total` (default mode) is five part models, Dataset291..295 at 1.5 mm; the
package holds each as a part (a folder with model.onnx + segpipe.json, as
import_nnunet.py writes one), the task's class map (`class_map["total"]`, ids
and names identical) and the merge rule: parts in order 291 -> 295, each part's
labels mapped to the task's ids through its `class_map_5_parts` entry, a
later part overwriting wherever it predicts anything but background.
`--fast` (Dataset297, 3 mm) and `--fastest` (Dataset298, 6 mm) are one part
each. `total_mr` likewise: Dataset850 and 851 merged with class_map_parts_mr,
--fast 852, --fastest 853, and 852 as its --roi-subset crop model (python_api.py
always crops MR with the 3 mm model). `total_v3`: Dataset831..835 with
class_map_5_parts_total_v3, --fast 836, --fastest 837, plans nnUNetPlans (its
default model size) or with --model-size small nnUNetResEncUNetLPlans_8, as
python_api.py's model_size="small" (the crop model keeps nnUNetPlans).
Unless --no-crop-model, the default mode also takes Dataset298 (when its
weights are there) as the low-resolution model that `--roi-subset` crops with,
as TotalSegmentator does. Sliding-window step 0.8 (TotalSegmentator's for the
total tasks), no test-time mirroring.

`body` (default 1.5 mm, Dataset299; --fast 6 mm, Dataset300) is one part with
nnunet.py's cleanups as the package's "blobs": the largest 6-connected blob of
body_trunc kept, blobs of body_extremities of at most 50000 mm3 removed; and
"derived_masks": "body" (body.nii.gz and skin.nii.gz beside a --split output).
`body_mr` (597, --fast 598) is one part without cleanups (nnunet.py runs them
for "body" only). `vertebrae_pp` (803) carries postprocess_vertebrae_pp as
"vertebrae_pp"; `vertebrae_pp_refined` too, with Dataset305 (vertebrae_body)
as its "refine" model (python_api.py runs it on the whole scan; nnunet.py's
refine_vertebrae_pp_with_body_mask: labels dilated 2 mm on the input grid,
kept on its vertebral bodies). `teeth` is cropped by another whole task
(its crop_model craniofacial_structures, imported into the package).

`headneck_muscles` is two part models (778, 779) merged the same way with its
own part maps (class_map_parts_headneck_muscles), cropped as a subtask.

One-model subtasks (`cerebral_bleed`, `liver_vessels`, `lung_vessels`,
`hip_implant`, ... : an int task_id, no cascade, no other crop model, no
remove_outside/remove_mask) are imported too: their class map, step 0.5, and
when the task crops (its "crop" list) the crop model TotalSegmentator runs
first (Dataset298 at 6 mm, Dataset297 at 3 mm for robust_crop tasks) with
the structures and a 20 mm margin (python_api.py overrides a task's
crop_addon with 20 mm whenever the total model crops); segpipe then crops
every run as TotalSegmentator does. TotalSegmentator's remove_auxiliary_labels
(appendicular_bones, kidney_cysts, renal_arteries, face_mr: classes the network
has besides the task's, class_map[task + "_auxiliary"]) is the part's map
sending those classes to background. MR tasks that crop (*_mr) crop with
Dataset852 and total_mr's names, as python_api.py. A task's remove_outside
(heartchambers_highres: labels outside heart, aorta and inferior_vena_cava of the
crop model, dilated by 10 mm, removed) goes into the crop rule.

A task's folds are TotalSegmentator's (fold 0; 0..4 for the aorta/pulmonary
report models; for folds None every fold_N nnU-Net would find), several as a
fold ensemble; parts never mirror by default (TotalSegmentator: tta=False).

Exit codes: 0 written; 2 usage; 4 weights missing or not what the task needs
(message names the folder expected).
"""
import argparse, json, os, shutil, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import import_nnunet  # noqa: E402
from import_nnunet import ImportError_  # noqa: E402

MAPS = os.path.join(HERE, "totalseg_maps.json")
SUPPORTED = ("total", "total_v3", "total_mr", "body", "body_mr")
# nnunet.py's blob cleanups of a task's prediction, on its grid before the labels go back:
# keep_largest_blob_multilabel (rois) and remove_small_blobs_multilabel (interval [mm3 / voxel volume, 1e10])
TASK_BLOBS = {"body": [("body_trunc", "largest"), ("body_extremities", 50000)]}
# tasks of several models: the part maps and task id -> part name TotalSegmentator merges them with
# (nnunet.py's class_map_parts / map_taskid_to_partname for the task)
PART_MAPS = {"total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
             "total_v3": ("class_map_5_parts_total_v3", "map_taskid_to_partname_ct_v3"),
             "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr"),
             "headneck_muscles": ("class_map_parts_headneck_muscles", "map_taskid_to_partname_headneck_muscles")}
CROP_TASK_ID, CROP_TRAINER, CROP_ADDON_MM = 298, "nnUNetTrainer_4000epochs_NoMirroring", [20, 20, 20]
# python_api.py's crop model for --roi-subset: the 6 mm CT model, or for MR tasks always the 3 mm
# total_mr model (Dataset852) with total_mr's class map
# (total_v3 too crops with 298 and class_map["total"]'s names, as python_api.py)
ROI_CROP = {"total": (298, CROP_TRAINER, "total"), "total_v3": (298, CROP_TRAINER, "total"),
            "total_mr": (852, "nnUNetTrainer_2000epochs_NoMirroring", "total_mr")}
STEP_TOTAL = 0.8    # nnunet.py: tile step for "total", "total_v3", "total_mr"


def load_maps():
    with open(MAPS) as f:
        return json.load(f)


UNSUPPORTED_KEYS = ("cascade", "crop_model", "remove_mask")
# what TotalSegmentator does for these tasks that a package cannot hold (nnunet.py / python_api.py)
UNSUPPORTED_STEPS = {}
# python_api.py for vertebrae_pp_refined: vertebrae_body (Dataset305, nnUNetTrainer_DASegOrd0, 1.5 mm) on
# the whole scan, then nnunet.py's refine_vertebrae_pp_with_body_mask(dilation_mm=2) keeping its label 1
REFINE = {"vertebrae_pp_refined": {"task_id": 305, "trainer": "nnUNetTrainer_DASegOrd0", "task": "vertebrae_body",
                                   "keep": "vertebrae_body", "dilation_mm": 2}}
# nnunet.py's postprocess_vertebrae_pp for task "vertebrae_pp" (its defaults: components under 100 mm3
# dropped, labels dilated 3 mm), on the prediction's grid
VERTEBRAE_PP = {"min_mm3": 100, "dilation_mm": 3}


# python_api.py's get_task_config: total_v3 with model_size="small" reads every model of the task
# (parts, --fast, --fastest) from these plans; its crop models stay nnUNetPlans (run without plans)
SMALL_PLANS = {"total_v3": "nnUNetResEncUNetLPlans_8"}


def task_config(maps, task, fast, fastest, model_size="big"):
    """TotalSegmentator's get_task_config (plans "nnUNetPlans", the
    totalsegmentator() default): the sub-modes of total, total_mr and body,
    or a subtask (its crop rule included). Refused: the tasks whose
    running needs more than a crop (a cascade, another crop model,
    remove_mask, a body crop, several models)."""
    raw = maps["TASK_CONFIGS"].get(task)
    if raw is None:
        raise ImportError_(f"unknown TotalSegmentator task {task!r}")
    if model_size == "small" and task not in SMALL_PLANS:
        raise ImportError_(f"--model-size small is only for task {', '.join(SMALL_PLANS)} (as TotalSegmentator's "
                           f"model_size), not {task!r}")
    cfg = dict(maps["DEFAULT_CONFIG"], plans="nnUNetPlans")
    if "sub_modes" in raw:
        if task not in SUPPORTED:
            raise ImportError_(f"task {task!r} is not supported yet (supported: {', '.join(SUPPORTED)} and "
                               f"one-model subtasks)")
        mode = "fast" if fast else ("fastest" if fastest else "default")
        if mode not in raw["sub_modes"]:   # get_task_config: --fastest falls back to fast (body)
            mode = "fast" if fast or fastest else "default"
        cfg.update(raw["sub_modes"][mode])
        cfg["mode"] = mode
        if model_size == "small":
            cfg["plans"] = SMALL_PLANS[task]
        return cfg
    if fast or fastest:
        raise ImportError_(f"task {task!r} has no --fast/--fastest model")
    cfg.update({k: v for k, v in raw.items() if k not in ("disallow_fast", "commercial", "info_msg")})
    why = [k for k in UNSUPPORTED_KEYS if cfg.get(k) and not (k == "crop_model" and task_crop_ok(maps, cfg))]
    if task in UNSUPPORTED_STEPS:
        why.append(UNSUPPORTED_STEPS[task])
    if cfg.get("crop") and cfg.get("modality") == "mr" and not task.endswith("_mr"):
        # python_api.py would crop with the 6 mm CT model but read total_mr's names
        why.append("a crop of an MR task not named *_mr")
    if not isinstance(cfg["task_id"], int) and task not in PART_MAPS:
        why.append("several models")
    if cfg.get("crop") is not None and not isinstance(cfg["crop"], list):
        why.append(f"crop {cfg['crop']!r}")
    if why:
        raise ImportError_(f"task {task!r} is not supported yet (it needs: {', '.join(why)})")
    cfg["mode"] = "default"
    return cfg


def task_crop_ok(maps, cfg):
    """A crop from another whole task (python_api.py's crop_model: it runs
    totalsegmentator(task=crop_model) and crops to cfg["crop"] of its
    labels): taken when that task is a one-model subtask cropping with a
    single model itself (teeth's craniofacial_structures), one level deep."""
    sub = maps["TASK_CONFIGS"].get(cfg.get("crop_model"), {})
    return (isinstance(cfg.get("crop"), list) and isinstance(sub.get("task_id"), int) and "sub_modes" not in sub
            and not any(sub.get(k) for k in UNSUPPORTED_KEYS))


def weights_dir(home, override):
    if override:
        return override
    if os.environ.get("TOTALSEG_WEIGHTS_PATH") and not home:
        return os.environ["TOTALSEG_WEIGHTS_PATH"]
    home = home or os.environ.get("TOTALSEG_HOME_DIR") or os.path.join(os.path.expanduser("~"), ".totalsegmentator")
    return os.path.join(home, "nnunet", "results")


def dataset_folder(maps, results, tid):
    """The dataset folder of task id tid: TotalSegmentator's download folder
    name when present, else the one folder whose name holds DatasetNNN (as
    get_full_task_name_v2 looks)."""
    known = maps["TASK_ID_WEIGHTS_CONFIGS"].get(str(tid), {}).get("foldername")
    if known and os.path.isdir(os.path.join(results, known)):
        return os.path.join(results, known)
    if not os.path.isdir(results):
        raise ImportError_(f"no weights folder {results} (download TotalSegmentator's weights first: "
                           f"totalseg_download_weights -t total)")
    hits = sorted(d for d in os.listdir(results) if f"Dataset{tid:03d}" in d)
    if not hits:
        raise ImportError_(f"no weights for task id {tid} in {results} (expected {known or f'Dataset{tid:03d}_*'})")
    if len(hits) > 1:
        raise ImportError_(f"several folders for task id {tid} in {results}: {', '.join(hits)}")
    return os.path.join(results, hits[0])


def model_folder(maps, results, tid, trainer, plans, model, folds=(0,)):
    d = os.path.join(dataset_folder(maps, results, tid), f"{trainer}__{plans}__{model}")
    for f in (folds if folds is not None else available_folds(d) or [0]):
        ck = os.path.join(d, f"fold_{f}", "checkpoint_final.pth")
        if not os.path.isfile(ck):
            raise ImportError_(f"task id {tid}: no {os.path.relpath(ck, results)} under {results}")
    return d


def available_folds(d):
    """nnU-Net's auto_detect_available_folds, which TotalSegmentator's
    folds=None asks for: the fold_N folders (not fold_all) holding
    checkpoint_final.pth, in sorted folder-name order."""
    if not os.path.isdir(d):
        return []
    names = sorted(n for n in os.listdir(d) if n.startswith("fold_") and n != "fold_all"
                   and os.path.isfile(os.path.join(d, n, "checkpoint_final.pth")))
    return [int(n.split("_")[-1]) for n in names]


def ds_classes(folder):
    ds = json.load(open(os.path.join(folder, "dataset.json")))
    return max(v for v in ds["labels"].values() if isinstance(v, int)) + 1


def import_part(folder, out, name, labels, step, int32, folds=(0,)):
    """One nnU-Net model as a part package; its labels become TotalSegmentator's
    names for that model (the class count must match the network's); folds:
    the task's (None: those nnU-Net finds), several averaged as nnU-Net does."""
    n_ds = ds_classes(folder)
    n_ts = max(labels) + 1
    if n_ds != n_ts:
        raise ImportError_(f"{os.path.basename(os.path.dirname(folder))}: dataset.json has {n_ds} classes, "
                           f"TotalSegmentator's map for it {n_ts}")
    folds = available_folds(folder) if folds is None else folds
    _, man = import_nnunet.import_folder(folder, out, ",".join(str(f) for f in folds), "checkpoint_final.pth", None)
    man["name"] = name
    man["labels"] = {str(k): v for k, v in sorted({0: "background", **labels}.items())}
    man["sliding_window"]["step"] = step
    # nnunet.py: change_spacing(..., dtype=np.int32) before nnU-Net when TotalSegmentator resamples (crop models
    # always; a task's parts when its config has "resample"); run on its own, a part does as in its task
    man["resampled_int32"] = int32
    if int32:   # TotalSegmentator resamples (linear, its --resampling_order 1); nnU-Net then keeps the grid
        man.pop("resample", None)
    if "tta" in man:   # a trainer that allows mirroring: TotalSegmentator still runs nnU-Net with tta=False
        man["tta"]["default"] = False
    with open(os.path.join(out, "segpipe.json"), "w") as f:
        json.dump(man, f, indent=1)
    return man


def auxiliary(maps, task):
    """The network's classes TotalSegmentator removes after predicting
    (postprocessing.py's remove_auxiliary_labels: class_map[task + "_auxiliary"],
    e.g. humerus, femur, liver, spleen of appendicular_bones), {id: name}."""
    aux = {int(k): v for k, v in maps["class_map"].get(task + "_auxiliary", {}).items()}
    clash = sorted(set(aux) & {int(k) for k in maps["class_map"][task]})
    if clash:
        raise ImportError_(f"{task}: auxiliary class ids {clash} are also task classes")
    return aux


def build(maps, results, out, task, fast, fastest, crop_model=True, fp16=False, model_size="big"):
    cfg = task_config(maps, task, fast, fastest, model_size)
    tids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
    cmap = {int(k): v for k, v in maps["class_map"][task].items()}
    inv = {v: k for k, v in cmap.items()}
    folders = [model_folder(maps, results, t, cfg["trainer"], cfg["plans"], cfg["model"], cfg["folds"]) for t in tids]
    crop, crop_id, subtask = None, CROP_TASK_ID, "sub_modes" not in maps["TASK_CONFIGS"][task]
    crop_task = ROI_CROP[task][2] if task in ROI_CROP else ("total_mr" if task.endswith("_mr") else "total")
    if subtask and cfg.get("crop_model"):   # another whole task crops (built below, into the package)
        crop_id, ccfg = cfg["crop_model"], task_config(maps, cfg["crop_model"], False, False)
        model_folder(maps, results, ccfg["task_id"], ccfg["trainer"], ccfg["plans"], ccfg["model"])   # weights there?
        if ccfg.get("crop"):
            model_folder(maps, results, 297 if ccfg.get("robust_crop") else 298, CROP_TRAINER, "nnUNetPlans",
                         "3d_fullres")
    elif subtask and cfg.get("crop"):   # the crop model TotalSegmentator runs first (python_api.py)
        if crop_task == "total_mr":   # MR: always the 3 mm total_mr model
            crop_id, trainer = 852, ROI_CROP["total_mr"][1]
        else:
            crop_id, trainer = (297 if cfg.get("robust_crop") else 298), CROP_TRAINER
        crop = model_folder(maps, results, crop_id, trainer, "nnUNetPlans", "3d_fullres")
    elif cfg["mode"] == "default" and crop_model and task in ROI_CROP:
        crop_id, trainer, _ = ROI_CROP[task]
        try:
            crop = model_folder(maps, results, crop_id, trainer, "nnUNetPlans", cfg["model"])
        except ImportError_:
            crop = None
    refine = None
    if task in REFINE:   # its weights checked before anything is written
        refine = model_folder(maps, results, REFINE[task]["task_id"], REFINE[task]["trainer"], "nnUNetPlans",
                              "3d_fullres")
    step = STEP_TOTAL if task in ("total", "total_v3", "total_mr") else 0.5
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    parts = []
    for tid, folder in zip(tids, folders):
        if len(tids) > 1:
            parts_key, names_key = PART_MAPS[task]
            pname = maps[names_key][str(tid)]
            local = {int(k): v for k, v in maps[parts_key][pname].items()}
        else:
            pname, local = (task if "sub_modes" not in maps["TASK_CONFIGS"][task] else f"{task}_{cfg['mode']}"), dict(cmap)
        aux = auxiliary(maps, task) if len(tids) == 1 else {}
        if aux and ds_classes(folder) <= max(local):   # a network without them: nothing to remove
            aux = {}
        local.update(aux)
        lut = [0] * (max(local) + 1)
        for j, name in local.items():
            # class_map_inv[class_map_5_parts[part][j]]; an auxiliary class goes to background
            lut[j] = 0 if j in aux else inv[name]
        sub = f"part{tid}"
        import_part(folder, os.path.join(out, sub), f"totalseg-{tid}-{pname.replace('class_map_part_', '')}",
                    local, step, cfg["resample"] is not None, cfg["folds"])
        if fp16:
            import_nnunet.add_fp16(os.path.join(out, sub), json.load(open(os.path.join(out, sub, "segpipe.json"))))
        parts.append({"dir": sub, "task_id": tid, "part": pname, "map": lut,
                      "source": os.path.relpath(folder, results)})
    man = {"format": "segpipe-model", "version": 1, "task": "ct",
           "name": f"totalseg-{task}" + ("" if cfg["mode"] == "default" else f"-{cfg['mode']}")
                   + ("-small" if model_size == "small" else ""),
           "description": f"TotalSegmentator task '{task}' ({cfg['mode']}): {len(parts)} part model(s) "
                          f"{', '.join(str(t) for t in tids)} at {cfg['resample'] or 'the plans spacing'} mm, merged into "
                          f"{len(cmap)} classes",
           "parts": parts, "merge": "overwrite_nonzero", "resampled_int32": cfg["resample"] is not None,
           "labels": {str(k): v for k, v in sorted({0: "background", **cmap}.items())},
           "totalsegmentator": {"task": task, "mode": cfg["mode"], "task_ids": tids, "resample": cfg["resample"],
                                "trainer": cfg["trainer"], "plans": cfg["plans"], "model": cfg["model"],
                                "folds": cfg["folds"] if cfg["folds"] is not None else available_folds(folders[0]),
                                "step": step, "maps_commit": maps["source"]["commit"]}}
    first = json.load(open(os.path.join(out, parts[0]["dir"], "segpipe.json")))
    if cfg["resample"] is None and len(parts) == 1 and first.get("resample") == "nnunet":
        man["resample"] = "nnunet"   # TotalSegmentator leaves the grid to nnU-Net: normalised, then its order 3
    if task in ("vertebrae_pp", "vertebrae_pp_refined"):   # nnunet.py runs vertebrae_pp's postprocessing for both
        man["vertebrae_pp"] = dict(c1=inv["vertebrae_C1"], l5=inv["vertebrae_L5"], **VERTEBRAE_PP)
    if task in REFINE:
        rf = REFINE[task]
        sub = f"mask{rf['task_id']}"
        labels = {int(k): v for k, v in maps["class_map"][rf["task"]].items()}
        import_part(refine, os.path.join(out, sub), f"totalseg-{rf['task_id']}-{rf['task']}", labels, 0.5, True)
        man["refine"] = {"dir": sub, "task_id": rf["task_id"], "task": rf["task"],
                         "keep_label": {v: k for k, v in labels.items()}[rf["keep"]], "dilation_mm": rf["dilation_mm"],
                         "source": os.path.relpath(refine, results)}
    if task == "body":   # nnunet.py: body.nii.gz and skin.nii.gz beside a split output of task "body"
        man["derived_masks"] = "body"
    if task in TASK_BLOBS:
        man["blobs"] = [dict({"label": inv[name], "name": name},
                             **({"keep": "largest"} if rule == "largest" else {"remove_mm3": rule}))
                        for name, rule in TASK_BLOBS[task]]
    if aux:   # informative: the part's map sends these classes to background
        man["totalsegmentator"]["remove_auxiliary_labels"] = {str(k): v for k, v in sorted(aux.items())}
    if subtask and cfg.get("crop_model"):
        task_crop(maps, results, out, man, cfg, fp16)
    elif crop:
        sub = f"crop{crop_id}"
        total = {int(k): v for k, v in maps["class_map"][crop_task].items()}
        import_part(crop, os.path.join(out, sub), f"totalseg-{crop_id}-crop", total, STEP_TOTAL, True)
        rule = {"dir": sub, "task_id": crop_id, "source": os.path.relpath(crop, results)}
        if subtask:   # every run crops to these structures of the total model
            missing = [n for n in cfg["crop"] if n not in total.values()]
            if missing:
                raise ImportError_(f"crop structures {missing} are not in class_map[{crop_task!r}]")
            # python_api.py: crop_addon = [20,20,20] if crop_model is None else crop_addon, so a
            # task's own crop_addon is overridden whenever the total model crops (all tasks here)
            man["crop"] = dict(rule, structures=list(cfg["crop"]), addon_mm=CROP_ADDON_MM)
            if cfg.get("remove_outside"):   # python_api.py: a mask of these in the crop model's labels,
                # nnunet.py: remove_outside_of_mask(seg, mask, int(dilation / mean voxel size)) at the end
                missing = [n for n in cfg["remove_outside"] if n not in total.values()]
                if missing:
                    raise ImportError_(f"remove_outside structures {missing} are not in class_map[{crop_task!r}]")
                man["crop"].update(remove_outside=list(cfg["remove_outside"]),
                                   remove_outside_mm=cfg["remove_outside_dilation"])
        else:         # --roi-subset crops with it, 20 mm
            man["roi_crop"] = dict(rule, addon_mm=CROP_ADDON_MM)
    with open(os.path.join(out, "segpipe.json"), "w") as f:
        json.dump(man, f, indent=1)
    return man


def task_crop(maps, results, out, man, cfg, fp16):
    """python_api.py with a crop_model: the whole task crop_model run first
    (here its own package, cropping as it does), the crop mask its labels
    cfg["crop"], and the task's own crop_addon kept (the 20 mm default is
    only for the total model's crops)."""
    name = cfg["crop_model"]
    sub = f"crop_{name}"
    inner = build(maps, results, os.path.join(out, sub), name, False, False, fp16=fp16)
    names = set(inner["labels"].values())
    missing = [n for n in cfg["crop"] if n not in names]
    if missing:
        raise ImportError_(f"crop structures {missing} are not in class_map[{name!r}]")
    man["crop"] = {"dir": sub, "task": name, "task_id": inner["totalsegmentator"]["task_ids"][0],
                   "structures": list(cfg["crop"]), "addon_mm": list(cfg["crop_addon"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("home", nargs="?", help="TotalSegmentator's home (default $TOTALSEG_HOME_DIR or ~/.totalsegmentator)")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--task", default="total")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--fast", action="store_true", help="the 3 mm model (Dataset297)")
    g.add_argument("--fastest", action="store_true", help="the 6 mm model (Dataset298)")
    ap.add_argument("--weights", help="the nnU-Net results folder itself (TOTALSEG_WEIGHTS_PATH)")
    ap.add_argument("--no-crop-model", action="store_true", help="leave out the 6 mm model --roi-subset crops with")
    ap.add_argument("--fp16", action="store_true", help="also an fp16 copy of each part for GPUs")
    ap.add_argument("--model-size", "--model_size", choices=("big", "small"), default="big",
                    help="TotalSegmentator's model_size: small reads total_v3's nnUNetResEncUNetLPlans_8 models")
    a = ap.parse_args()
    existed = os.path.exists(a.out)
    try:
        maps = load_maps()
        man = build(maps, weights_dir(a.home, a.weights), a.out, a.task, a.fast, a.fastest,
                    crop_model=not a.no_crop_model, fp16=a.fp16, model_size=a.model_size)
    except (ImportError_, KeyError, FileNotFoundError, ValueError) as e:
        print(f"import_totalseg: {e}", file=sys.stderr)
        if not existed and os.path.isdir(a.out):   # no half-written package
            shutil.rmtree(a.out)
        sys.exit(4)
    print(f"wrote {a.out}: {man['name']}, {len(man['parts'])} part(s), {len(man['labels']) - 1} classes"
          + (", crop model for --roi-subset" if "roi_crop" in man else "")
          + (f", cropped to {', '.join(man['crop']['structures'])}" if "crop" in man else ""))


if __name__ == "__main__":
    main()
