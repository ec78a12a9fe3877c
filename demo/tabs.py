"""The web app's page, part by part: the header, then each tab's widgets and its wiring.

Each tab is two plain functions: one lays out its widgets (a namespace of them), the other wires
its buttons to handlers (vaekit_demo.handlers: widgets in, library call, widgets out). The
wiring comes after every tab is laid out, because some outputs live on other tabs (a new model
updates the Anomaly tab's threshold and the Latent tab's folder). `TABS` lists them in page order.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

import vaekit
from vaekit.anomaly.quantiles import distinct_decimals
from vaekit.inference.engine import score_unit
from vaekit.errors import BadInput
from vaekit_demo import compress_tab, figures, handlers, training
from vaekit_demo.context import DECODING, Context, data_folder, skipped_note, warn_skipped
from vaekit_demo.security import confine, md_code

SUMMARY_ROWS = 10  # images the anomaly summary names, highest scores first; the table holds every one


def header(ctx: Context) -> SimpleNamespace:
    gr.Markdown("# vaekit\nConvolutional VAEs on your own images: train, compress, score anomalies, generate.")
    model_md = gr.Markdown(handlers.describe(ctx.st.model, ctx.roots), elem_id="model-info")
    with gr.Row():
        model_path = gr.Textbox(show_label=False, placeholder="open another model: runs/NAME  or  model.onnx",
                                scale=5, container=False)
        open_btn = gr.Button("Open", scale=1, min_width=80, size="md")
    return SimpleNamespace(model_md=model_md, model_path=model_path, open_btn=open_btn)


def wire_open(w: SimpleNamespace, ctx: Context) -> None:
    st = ctx.st

    @ctx.guard
    def open_model(path, request: gr.Request = None):
        if not path:
            raise BadInput("type the path of a run directory or an exported .onnx file")
        model = vaekit.load(confine(path, [st.data_root, st.runs_dir], st.server_folders, "model"))
        ctx.sessions.set_model(ctx.session(request), model)  # this page's, and pages opened from now on
        return ctx.model_outputs(request)

    w.open_btn.click(open_model, w.model_path, ctx.model_widgets, api_name="open_model")
    w.model_path.submit(open_model, w.model_path, ctx.model_widgets, api_visibility="private")


def _train_tab(ctx: Context) -> SimpleNamespace:
    gr.Markdown("Train a new model on a folder of normal images on this machine. "
                "When it finishes it becomes this page's model, and the model of pages opened after.")
    train_folder = gr.Textbox(label="Folder of training images (searched recursively)",
                              placeholder="/path/to/images", elem_id="train-folder")
    gr.Markdown("A setting at 0 is chosen from the images as `vaekit train` chooses it (image size, latent, layout, "
                "training budget): the page trains the model the command would.")
    with gr.Row():
        image_size = gr.Slider(0, 256, value=0, step=8, label="Image size (pixels; 0 = auto)", elem_id="train-size")
        latent_dim = gr.Slider(0, 256, value=0, step=1, label="Latent dimensions (0 = auto)", elem_id="train-latent")
        epochs = gr.Slider(0, 1000, value=0, step=1, label="Epochs (0 = auto)", elem_id="train-epochs")
    with gr.Row():
        train_btn = gr.Button("Train", variant="primary", elem_id="train-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
    train_status = gr.Markdown(elem_id="train-status")
    loss_plot = gr.LinePlot(None, x="epoch", y="loss",
                            color="split", title="Loss (-ELBO, nats per image)", label="Loss curve")
    return SimpleNamespace(train_folder=train_folder, image_size=image_size, latent_dim=latent_dim, epochs=epochs,
                           train_btn=train_btn, stop_btn=stop_btn, train_status=train_status, loss_plot=loss_plot)


def _wire_train(w: SimpleNamespace, ctx: Context) -> None:
    st = ctx.st

    @ctx.guard
    def train(folder, size, dim, n_epochs, request: gr.Request = None, progress=gr.Progress()):
        folder = confine(folder, [st.data_root], st.server_folders)  # links in it: the library's scan, confine_to
        _refuse_a_folder_holding_the_runs(folder, ctx)
        session = ctx.session(request)
        session.begin_training()  # a second press while one runs is refused, not queued behind it
        try:
            if not ctx.trainings.acquire(blocking=False):  # released by the worker when it ends
                raise BadInput(f"the app is running {ctx.max_trainings} training(s) already, the most it runs at once (each "
                               "holds its images and model in memory): wait for one to end, or use `vaekit train`")
            yield from _train_run(folder, size, dim, n_epochs, session, request, progress, ctx)
        finally:  # also when Gradio closes this generator (the page went away): its run stops too
            session.stop.set()
            session.ended = True  # a late Stop leaves what the page says of it (Done, Stopped, an error)
            session.training.release()

    def stop(request: gr.Request = None):
        session = ctx.session(request)
        if not session.training.locked():  # a stale press must not stop this page's next run
            # after a run ended, its Done or Stopped message stays (a late press replaced it)
            return gr.skip() if session.ended else "Stopping: nothing is training on this page."
        session.stop.set()
        return "Stopping after the current batch…"

    # concurrency_limit=None: a run in one tab does not hold another tab's Train (or its Stop) in the queue
    w.train_btn.click(train, [w.train_folder, w.image_size, w.latent_dim, w.epochs],
                      [w.train_status, w.loss_plot, *ctx.model_widgets], api_name="train", show_progress_on=[w.train_status],
                      concurrency_limit=None)
    w.stop_btn.click(stop, None, w.train_status, api_name="stop", queue=False)


def _refuse_a_folder_holding_the_runs(folder: Path, ctx: Context) -> None:
    """BadInput when the runs folder lies inside `folder` (the data root itself, with the default --runs-dir):
    the library's refusal named an option the page has not ("--out runs-DATE is inside the input folder")."""
    runs = ctx.st.runs_dir.resolve()
    try:
        runs.relative_to(folder)
    except ValueError:
        return
    where = "is the app's runs folder" if runs == folder else f"holds the app's runs folder {md_code(ctx.public(runs) + '/')}"
    raise BadInput(f"{md_code(ctx.public(folder))} {where}, and a run's files would become training images: "
                   "give the folder of your images")


def _train_run(folder, size, dim, n_epochs, session, request, progress, ctx: Context):
    """The Train button's updates for one run in `session` (stopped by its Stop button only).
    The training slot `train` took is released by train_events' worker, or here when none starts."""
    try:
        out = ctx.new_run_dir(folder)
    except BaseException:
        ctx.trainings.release()  # else four failed presses left the app refusing every Train
        raise
    rows: list[dict] = []
    plan: dict | None = None
    keep = (gr.skip(),) * len(ctx.model_widgets)
    for ev in training.train_events(folder, out, size, dim, n_epochs, session.stop, slot=ctx.trainings,
                                    confine_to=ctx.st.data_root):
        m = ev.metrics
        if ev.phase == "decode":
            progress((ev.done, ev.total), desc="decoding images", unit="images")
        elif ev.phase == "train":
            progress((ev.done, ev.total), desc=f"epoch {m['epoch']}/{m['epochs']} · loss {m['loss']:.2f}",
                     unit="batches")
        elif ev.phase == "crossfit":  # a few images: one more model per fold, for out-of-sample scores
            progress((ev.done, ev.total), desc="training the fold models", unit="models")
        elif ev.phase == "reader":  # a surface: its defect readers train after the VAE
            progress((ev.done, ev.total), desc="training the defect readers", unit="steps")
        elif ev.phase == "epoch":  # no validation line when nothing is held out for it (it repeats the training loss)
            rows += [{"epoch": m["epoch"], "loss": m["train_loss"], "split": "train"}]
            if training.validated(m):
                rows += [{"epoch": m["epoch"], "loss": m["val_loss"], "split": "validation"}]
        if ev.phase == "done":
            ctx.sessions.set_model(session, vaekit.load(ev.result.run_dir))
        if ev.phase == "plan":  # its notes are said under every message after it, its loss unit in them
            plan = m
        said = training.message(ev, rows, out, folder, ctx, plan)
        if said is not None:
            yield said, pd.DataFrame(rows), *(ctx.model_outputs(request) if ev.phase == "done" else keep)


def _anomaly_tab(ctx: Context) -> SimpleNamespace:
    model = ctx.st.model
    with gr.Row():
        with gr.Column():
            anom_files = gr.File(label="Images to score", file_count="multiple", file_types=["image"],
                                 elem_id="anomaly-files")
            threshold = gr.Slider(elem_id="threshold", **figures.threshold_range(model))
            anom_btn = gr.Button("Score", variant="primary", elem_id="score-btn")
        with gr.Column():
            anom_summary = gr.Markdown(elem_id="anomaly-summary")
            hist = gr.Plot(figures.model_histogram(model, figures.threshold_range(model)["value"] if model else None),
                           label="Scores", elem_id="histogram")
    overlays = gr.Gallery(label="Where each image is anomalous: per-pixel score over the image", format="png",
                          columns=8, height=260, preview=False, object_fit="contain",
                          elem_classes=["vk-pixels"], elem_id="heatmaps")
    anom_table = gr.Dataframe(headers=handlers.ANOMALY_COLUMNS, label="Scores", interactive=False,
                              elem_id="anomaly-table")
    csv_out = gr.File(label="CSV (download)", elem_id="csv-out", height=90)
    return SimpleNamespace(anom_files=anom_files, threshold=threshold, anom_btn=anom_btn, anom_summary=anom_summary,
                           hist=hist, overlays=overlays, anom_table=anom_table, csv_out=csv_out)


def anomaly_summary(model, r) -> str:
    """The Detect tab's summary of a scoring (handlers.AnomalyResult `r`): how many are anomalous,
    the highest scores, files skipped, and what a defect score of exactly 1 means where one is shown."""
    from vaekit.inference.frame import SCORE_ONE

    unit = score_unit(r.score)  # the score computed: an export without its reader scores the atypicality, sd²
    d = distinct_decimals(r.scores, r.threshold)  # no "8.05 anomalous" at threshold 8.05
    lines = [f"**{int(r.anomalous.sum())} of {len(r.names)} anomalous** at threshold {r.threshold:.{d}f} {unit}"]
    top = sorted(range(len(r.names)), key=lambda i: (not math.isnan(r.scores[i]), -r.scores[i]))  # NaN: first
    lines += [f"- {md_code(r.names[i])}: score **{r.scores[i]:.{d}f}** {unit} → "
              f"{'**anomalous**' if r.anomalous[i] else 'normal'}" for i in top[:SUMMARY_ROWS]]
    if len(r.names) > SUMMARY_ROWS:
        lines.append(f"- … and {len(r.names) - SUMMARY_ROWS} more, lower: the table below has every image")
    if r.score == "defect" and any(r.scores[i] == 1.0 for i in top[:SUMMARY_ROWS]):
        lines.append(f"\n{SCORE_ONE[0].upper()}{SCORE_ONE[1:]}.")
    lines.append(skipped_note(r.skipped, "scored"))
    return "\n".join(lines)


def _wire_anomaly(w: SimpleNamespace, ctx: Context) -> None:
    @ctx.guard
    def anomaly(files, thr, request: gr.Request = None, button: str = "anomaly"):
        model = ctx.session(request).model
        with ctx.outputs(request, button) as out:
            r = handlers.anomaly(model, files, thr, out)
            csv = ctx.served(w.csv_out, r.csv)
        warn_skipped(r.skipped)
        caption, d = distinct_decimals(r.scores, r.threshold, least=1), distinct_decimals(r.scores, r.threshold)
        gallery = [(handlers.hwc(o), f"{n}: {s:.{caption}f}") for o, n, s in zip(r.overlays, r.names, r.scores)]
        return anomaly_summary(model, r), figures.model_histogram(model, r.threshold, r), gallery, r.table(max(3, d)), csv

    @ctx.guard
    def rethreshold(files, thr, request: gr.Request = None):
        thr = handlers.finite_threshold(thr)
        model = ctx.session(request).model
        if files and model is not None:  # its own folder: the slider's event can run beside the button's
            return anomaly(files, thr, request, "threshold")
        return gr.skip(), figures.model_histogram(model, thr), gr.skip(), gr.skip(), gr.skip()

    outputs = [w.anom_summary, w.hist, w.overlays, w.anom_table, w.csv_out]
    w.anom_btn.click(anomaly, [w.anom_files, w.threshold], outputs, api_name="anomaly", **DECODING)
    w.threshold.release(rethreshold, [w.anom_files, w.threshold], outputs, api_name="threshold", **DECODING)


def _generate_tab(ctx: Context) -> SimpleNamespace:
    with gr.Row():
        with gr.Column(scale=1):
            n_samples = gr.Slider(1, 64, value=16, step=1, label="Images")
            temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
            seed = gr.Number(0, precision=0, label="Seed")
            sample_btn = gr.Button("Sample", variant="primary", elem_id="sample-btn")
        samples = gr.Image(label="Samples from the prior", format="png", type="numpy", interactive=False,
                           elem_classes=["vk-pixels"], scale=2, height=420, elem_id="samples")
    gr.Markdown("### Interpolate between two images")
    with gr.Row():
        # files, not gr.Image: gr.Image opens an upload with every format PIL has before vaekit sees
        # it (an EPS named .png), and a file it cannot open became an error with no message
        img_a = gr.File(label="From", file_types=["image"], type="filepath", height=120, elem_id="interp-a")
        img_b = gr.File(label="To", file_types=["image"], type="filepath", height=120, elem_id="interp-b")
        with gr.Column():
            steps = gr.Slider(2, 16, value=8, step=1, label="Steps")
            interp_btn = gr.Button("Interpolate", elem_id="interp-btn")
    strip = gr.Image(label="Interpolation", format="png", type="numpy", interactive=False,
                     elem_classes=["vk-pixels"], height=160, elem_id="strip")
    return SimpleNamespace(n_samples=n_samples, temperature=temperature, seed=seed, sample_btn=sample_btn,
                           samples=samples, img_a=img_a, img_b=img_b, steps=steps, interp_btn=interp_btn, strip=strip)


def _wire_generate(w: SimpleNamespace, ctx: Context) -> None:
    @ctx.guard
    def sample(n, temp, sd, request: gr.Request = None):
        return handlers.hwc(handlers.sample_grid(ctx.session(request).model, n, temp, sd))

    @ctx.guard
    def interpolate(a, b, n, request: gr.Request = None):
        return handlers.hwc(handlers.interpolation_strip(ctx.session(request).model, a, b, n))

    w.sample_btn.click(sample, [w.n_samples, w.temperature, w.seed], w.samples, api_name="sample")
    w.interp_btn.click(interpolate, [w.img_a, w.img_b, w.steps], w.strip, api_name="interpolate", **DECODING)


def _latent_tab(ctx: Context) -> SimpleNamespace:
    with gr.Row():
        lat_folder = gr.Textbox(data_folder(ctx.st.model, ctx.st.data_root),
                                label="Images to project (a folder on this machine)", scale=3, elem_id="latent-folder")
        method = gr.Radio(["PCA", "t-SNE"], value="PCA", label="Projection")
        limit = gr.Slider(10, 2000, value=500, step=10, label="At most this many images")
    lat_btn = gr.Button("Project", variant="primary", elem_id="latent-btn")
    lat_state = gr.State(None)
    scatter = gr.ScatterPlot(pd.DataFrame({"x": [], "y": [], "score": [], "file": []}), x="x", y="y",
                             color="score", tooltip=["file", "score"], height=420, elem_id="latent-plot",
                             label="Codes in 2-D, coloured by anomaly score (hover: file; drag across: images)")
    picked = gr.Gallery(label="Selected images (file · score)", format="png", columns=8, height=260,
                        preview=False, elem_classes=["vk-pixels"], elem_id="latent-picked")
    return SimpleNamespace(lat_folder=lat_folder, method=method, limit=limit, lat_btn=lat_btn, lat_state=lat_state,
                           scatter=scatter, picked=picked)


def _wire_latent(w: SimpleNamespace, ctx: Context) -> None:
    st = ctx.st

    @ctx.guard
    def latent(folder, how, n, request: gr.Request = None):
        folder = confine(folder, [st.data_root], st.server_folders)
        m = handlers.latent_map(ctx.session(request).model, folder, how, n, confine_to=st.data_root)
        df = pd.DataFrame({"x": m.xy[:, 0], "y": m.xy[:, 1], "score": m.scores, "file": m.names})
        return df, m, []

    @ctx.guard
    def latent_select(m, evt: gr.SelectData, request: gr.Request = None):
        if m is None or not isinstance(evt.index, (list, tuple)):
            return []
        return [(handlers.hwc(x), c) for x, c in handlers.latent_pick(ctx.session(request).model, m, *evt.index[:2])]

    w.lat_btn.click(latent, [w.lat_folder, w.method, w.limit], [w.scatter, w.lat_state, w.picked], api_name="latent", **DECODING)
    w.scatter.select(latent_select, w.lat_state, w.picked, api_visibility="private")


# (tab title, tab id, its widgets, its wiring), in the order the page shows them
TABS = (
    ("Train", "train", _train_tab, _wire_train),
    ("Compress", "compress", compress_tab.layout, compress_tab.wire),
    ("Anomaly", "anomaly", _anomaly_tab, _wire_anomaly),
    ("Generate", "generate", _generate_tab, _wire_generate),
    ("Latent space", "latent", _latent_tab, _wire_latent),
)
