"""Geom-Erasing on flow-matching models: tiny random SD3 and FLUX.1 train, export, load and sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from datasets_icd.geometry import location_vocabulary
from erasure.runs import LORA_FILE
from erasure.testing import save_tiny_flux, save_tiny_sd3
from erasure.training.models import flow_noising

FAMILIES = {  # kind: (builder, pipeline, SLD pipeline, learned-embeds files)
    "sd3": (save_tiny_sd3, "StableDiffusion3Pipeline", "SLDSD3Pipeline", 2),
    "flux": (save_tiny_flux, "FluxPipeline", "SLDFluxPipeline", 1),
}


def test_flow_noising_gives_the_interpolation_and_its_velocity():
    x0, noise = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), -1.0)
    noisy, target = flow_noising(x0, noise, torch.tensor([0.25, 1.0]))
    assert noisy.flatten().tolist() == [0.75 * 2 + 0.25 * -1, -1.0]  # x_t = (1 - σ) x0 + σ ε; σ = 1 is pure noise
    assert target.flatten().tolist() == [-3.0, -3.0]  # v = ε - x0


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_flow_model_trains_exports_and_loads(tmp_path, draw_tiny_icd, train_tiny, monkeypatch, kind):
    import diffusers

    import erasure
    import erasure.training.loop as loop

    build, pipeline_name, sld_name, num_embeds = FAMILIES[kind]
    model_dir = build(tmp_path / "model")
    icd = draw_tiny_icd(tmp_path / "icd", n=4)
    loaded = []
    load_components = loop.load_components
    monkeypatch.setattr(loop, "load_components", lambda *a, **k: loaded.append(load_components(*a, **k)) or loaded[-1])
    result = train_tiny(
        tmp_path / "train", model_dir, icd, "train.max_steps=2", "loss.region_alpha=0.5", kind="null"
    )  # model.kind read from model_index.json
    assert result.finished and loaded[0].kind == kind
    run_dir = result.run_dir

    lora = load_file(run_dir / LORA_FILE)
    assert all(k.startswith("transformer.") for k in lora)
    assert any("add_q_proj" in k for k in lora)  # the joint blocks' text stream is adapted too
    # B starts at zero: it has learned, except where no gradient reaches: SD3's last block discards its text
    # stream's attention output (context_pre_only), so that block's add_q_proj stays as it began.
    unlearned = {k for k, v in lora.items() if "lora_B" in k and v.abs().sum() == 0}
    assert unlearned <= {"transformer.transformer_blocks.1.attn.add_q_proj.lora_B.weight"}
    tokens = location_vocabulary(4)
    base = getattr(diffusers, pipeline_name).from_pretrained(model_dir)
    encoders = [base.text_encoder, base.text_encoder_2][:num_embeds]
    for i, encoder in enumerate(encoders):
        name = "learned_embeds.safetensors" if i == 0 else "learned_embeds_2.safetensors"
        rows = load_file(run_dir / name)
        assert list(rows) == tokens
        stacked = torch.stack(list(rows.values()))
        assert not torch.allclose(stacked[0], stacked[-1])  # all rows start at the same mean embedding
        trained = loaded[0].text_encoders[i].get_input_embeddings().weight.detach().cpu()
        old = encoder.get_input_embeddings().weight.detach()
        assert torch.equal(trained[: len(old)], old)  # only the new rows changed
    assert not (run_dir / "learned_embeds_2.safetensors").exists() or num_embeds == 2
    template = (run_dir / "negative_prompt.txt").read_text().strip()
    assert template == "{prompt}, watermark <loc_2_2> <loc_2_3>"

    # diffusers' own loaders
    base.load_lora_weights(run_dir)
    if hasattr(base, "load_textual_inversion"):
        rows = load_file(run_dir / "learned_embeds.safetensors")
        base.load_textual_inversion(list(rows.values()), token=list(rows), text_encoder=base.text_encoder)
        assert len(base.tokenizer("<loc_3_3>", add_special_tokens=False).input_ids) == 1

    # erasure.load_run into our SLD pipeline, and sampling with SLD and the exported template
    def sample(pipe):
        image = pipe(
            "a red circle",
            num_inference_steps=2,
            height=32,
            width=32,
            sld="medium",
            concept_negative_prompt=template,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]
        return np.asarray(image)

    sld = getattr(erasure, sld_name)
    before = sample(sld.from_pretrained(model_dir))
    pipe = sld.from_pretrained(model_dir)
    run = erasure.load_run(pipe, run_dir)
    assert run.negative_prompt_template == template and run.tokens == tokens and run.weights == "lora"
    assert len(pipe.tokenizer("<loc_3_3>", add_special_tokens=False).input_ids) == 1
    after = sample(pipe)
    assert np.isfinite(after).all() and not np.allclose(before, after)


def test_flow_sigmas_follow_the_schedule_of_each_family():
    from erasure.testing import tiny_flow_scheduler
    from erasure.training.models import flow_sigmas

    generator = torch.Generator().manual_seed(0)
    for scheduler in (tiny_flow_scheduler(), tiny_flow_scheduler(use_dynamic_shifting=True)):  # SD3, FLUX
        sigmas = flow_sigmas(scheduler, 256, "logit_normal", generator)
        assert sigmas.shape == (256,) and (sigmas > 0).all() and (sigmas <= 1).all()
        assert set(sigmas.tolist()) <= set(scheduler.sigmas.tolist())
    shifted = flow_sigmas(tiny_flow_scheduler(), 256, "logit_normal", generator)
    assert shifted.median() > 0.7  # SD3's shift 3.0 moves the logit-normal's median 0.5 to 0.75


@pytest.mark.parametrize("override", ["train.snr_gamma=5", "validation.prompts=[a cat]", "export.kohya=true"])
def test_flow_model_refuses_unet_only_settings(tmp_path, draw_tiny_icd, train_tiny, override):
    from erasure.config import ConfigError

    model_dir = save_tiny_sd3(tmp_path / "model")
    icd = draw_tiny_icd(tmp_path / "icd", n=2)
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train_tiny(tmp_path / "train", Path(model_dir), icd, override, kind="sd3")


@pytest.mark.parametrize(
    ("overrides", "weights", "loaded"),
    [
        (["train.mode=naive"], {LORA_FILE}, "lora"),
        (["train.mode=tokens_only"], {"learned_embeds.safetensors"}, "tokens"),
        (
            ["lora.full_unet=true", "train.learning_rate=0.001"],
            {"transformer", "learned_embeds.safetensors"},
            "transformer",
        ),
    ],
)
def test_flow_model_trains_every_mode(tmp_path, draw_tiny_icd, train_tiny, overrides, weights, loaded):
    import erasure

    model_dir = save_tiny_flux(tmp_path / "model")
    icd = draw_tiny_icd(tmp_path / "icd", n=2)
    result = train_tiny(tmp_path / "train", model_dir, icd, *overrides, "train.max_steps=1", kind="flux")
    files = {p.name for p in result.run_dir.iterdir()}
    assert files & {LORA_FILE, "learned_embeds.safetensors", "transformer", "unet"} == weights
    pipe = erasure.SLDFluxPipeline.from_pretrained(model_dir)
    assert erasure.load_run(pipe, result.run_dir).weights == loaded


@pytest.fixture
def fresh_accelerator():
    """accelerate fixes its mixed precision at the first Accelerator of a process: this test starts its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_flow_model_trains_in_bf16_with_checkpointing_and_resumes(
    tmp_path, draw_tiny_icd, train_tiny, fresh_accelerator, kind
):
    model_dir = FAMILIES[kind][0](tmp_path / "model")
    icd = draw_tiny_icd(tmp_path / "icd", n=2)
    common = ["train.mixed_precision=bf16", "train.gradient_checkpointing=true", "train.max_steps=2"]
    first = train_tiny(tmp_path / "train", model_dir, icd, *common, "train.stop_at_step=1", kind=kind)
    assert (first.global_step, first.finished) == (1, False)
    resumed = train_tiny(tmp_path / "train", model_dir, icd, *common, "checkpoint.resume=latest", kind=kind)
    assert (resumed.global_step, resumed.finished, resumed.mixed_precision) == (2, True, "bf16")
    lora = load_file(resumed.run_dir / LORA_FILE)
    assert all(torch.isfinite(v).all() for v in lora.values())


def _joint_inputs(width: int, rows: int) -> dict:
    torch.manual_seed(1)
    text = torch.randn(2, 5, width)
    return dict(
        hidden_states=torch.randn(2, 4, 16, 16),
        timestep=torch.tensor([300.0, 700.0]),
        encoder_hidden_states=torch.cat([text, torch.zeros(2, rows, width)], dim=1),
        pooled_projections=torch.randn(2, 64),
        return_dict=False,
    )


def test_one_zero_row_repeated_equals_the_pipelines_256_forward_and_backward():
    import torch.nn.functional as F

    from erasure.attention import last_key_repeated
    from erasure.testing import tiny_sd3_components

    transformer = tiny_sd3_components()["transformer"]
    plain_attention = F.scaled_dot_product_attention
    full = transformer(**_joint_inputs(64, 256))[0]
    full.square().mean().backward()
    full_grads = [p.grad.clone() for p in transformer.parameters()]
    transformer.zero_grad()
    with last_key_repeated(256):
        one = transformer(**_joint_inputs(64, 1))[0]
        one.square().mean().backward()
    assert F.scaled_dot_product_attention is plain_attention  # restored on leaving
    torch.testing.assert_close(one, full, atol=1e-5, rtol=1e-4)
    for p, grad in zip(transformer.parameters(), full_grads, strict=True):
        torch.testing.assert_close(p.grad, grad, atol=1e-5, rtol=1e-3)
    unbiased = transformer(**_joint_inputs(64, 1))[0]
    assert not torch.allclose(unbiased, full, atol=1e-3)  # without the bias one row is not 256


@pytest.mark.parametrize("dual_attention_layers", [(), (0,)])  # SD3, SD3.5 Medium's image-only second attention
def test_sd3_without_t5_trains_on_the_zero_rows_its_pipeline_samples_with(
    tmp_path, draw_tiny_icd, train_tiny, dual_attention_layers
):
    import erasure
    from erasure.recipe import ModelSection
    from erasure.training.models import flow_prediction, load_components

    model_dir = save_tiny_sd3(tmp_path / "model", t5=False, dual_attention_layers=dual_attention_layers)
    parts = load_components(ModelSection(pretrained=str(model_dir), kind="sd3"))
    assert parts.t5 is None
    ids = parts.tokenize(["a red circle", "two blue squares"])
    assert len(ids) == 2  # the CLIP encoders' only
    noisy, sigmas = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        ours = flow_prediction(parts, parts.unet, noisy, sigmas, parts.text_encoders, ids, torch.float32, False)
        pipe = erasure.load_pipeline(str(model_dir)).pipeline  # diffusers alone refuses the absent T5
        embeds, _, pooled, _ = pipe.encode_prompt(
            ["a red circle", "two blue squares"], None, None, do_classifier_free_guidance=False
        )
        assert embeds.shape[1] == 77 + 256  # CLIP's tokens, then 256 zero rows
        theirs = parts.unet(
            hidden_states=noisy, timestep=sigmas * 1000, encoder_hidden_states=embeds, pooled_projections=pooled
        )[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    result = train_tiny(tmp_path / "train", model_dir, draw_tiny_icd(tmp_path / "icd", n=2), kind="sd3")
    assert result.finished
    run = erasure.load_run(erasure.load_pipeline(str(model_dir)).pipeline, result.run_dir)
    assert run.weights == "lora"


def test_flux_kohya_file_loads_through_diffusers_as_the_lora_it_was(tmp_path):
    """FLUX.1's widths, one double and one single block: diffusers' kohya reader (the format ComfyUI and kohya's
    lora_flux.py write) gives back every module's update, fused q/k/v and the zero proj_mlp part included."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    from erasure.training.export import flux_kohya_state_dict

    width, rank, alpha = 3072, 4, 8.0
    outs = {"ff.net.0.proj": 4 * width, "norm1.linear": 6 * width}
    modules = [
        f"transformer_blocks.0.{m}"
        for m in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj")
        + ("attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "norm1.linear")
    ] + [f"single_transformer_blocks.0.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v")]
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for module in modules:
        out = outs.get(module.split(".", 2)[2], width)
        lora[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, width, generator=generator)
        lora[f"transformer.{module}.lora_B.weight"] = torch.randn(out, rank, generator=generator)
    save_file(lora, tmp_path / "lora.safetensors")
    kohya = flux_kohya_state_dict(tmp_path / "lora.safetensors", alpha)
    assert kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (3 * width, 3 * rank)
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (7 * width, 4 * rank)
    save_file(kohya, tmp_path / "kohya.safetensors")

    read = FluxPipeline.lora_state_dict(tmp_path / "kohya.safetensors")
    read = read[0] if isinstance(read, tuple) else read
    for module in modules:
        a, b = (lora[f"transformer.{module}.lora_{x}.weight"] for x in "AB")
        a2, b2 = (read[f"transformer.{module}.lora_{x}.weight"] for x in "AB")
        torch.testing.assert_close(b2 @ a2, alpha / rank * b @ a)  # diffusers folds alpha / rank into the weights
    mlp = read["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"]
    assert mlp.shape == (4 * width, rank) and not mlp.any()
    save_file({"transformer.x_embedder.lora_A.weight": torch.zeros(1, 1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no kohya name for .*x_embedder"):
        flux_kohya_state_dict(tmp_path / "other.safetensors", alpha)


def test_a_flux_run_writes_its_kohya_file(tmp_path, draw_tiny_icd, train_tiny):
    model_dir = save_tiny_flux(tmp_path / "model")
    icd = draw_tiny_icd(tmp_path / "icd", n=2)
    result = train_tiny(tmp_path / "train", model_dir, icd, "export.kohya=true", "train.max_steps=1", kind="flux")
    (kohya_file,) = [p for p in result.run_dir.glob("*.safetensors") if p.name.startswith("tiny")]
    keys = load_file(kohya_file)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_single_blocks_0_linear1.alpha" in keys
    assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "build", "adapted"),
    [
        (
            "sd35_geom_erasing_watermark",
            save_tiny_sd3,
            ["attn.to_q", "attn.add_q_proj", "ff.net.0.proj", "ff_context"],
        ),
        ("flux_geom_erasing_watermark", save_tiny_flux, ["attn.to_q", "ff.net.2", "ff_context", "proj_mlp"]),
    ],
)
def test_the_flow_recipes_train_on_a_tiny_model_of_their_family_as_written(
    tmp_path, draw_tiny_icd, fresh_accelerator, recipe, build, adapted
):
    """The committed SD3.5 / FLUX recipes with only the model, the data and the sizes swapped: their LoRA layout (the
    attention and the feed-forwards of both streams) reaches the transformer, and a FLUX run writes its kohya file."""
    from erasure.recipe import load_recipe
    from erasure.training import train
    from erasure.training.export import export_run

    model_dir = build(tmp_path / "model")
    icd = draw_tiny_icd(tmp_path / "icd", n=4)
    sizes = ["train.max_steps=2", "train.batch_size=2", "train.gradient_accumulation_steps=1", "train.num_workers=0"]
    sizes += ["data.resolution=32", "checkpoint.every=1", "report_to=null", "train.lr_warmup_steps=1"]
    path = Path(__file__).parents[2] / "recipes" / f"{recipe}.yaml"
    overrides = [f"model.pretrained={model_dir}", f"data.dataset={icd}", f"output_dir={tmp_path / 'run'}", *sizes]
    result = train(load_recipe(path, overrides))
    lora = load_file(result.run_dir / LORA_FILE)
    for module in adapted:
        assert any(f".{module}." in key for key in lora), module
    if build is save_tiny_flux:
        export_run(result.run_dir, kohya=True)
        kohya = load_file(result.run_dir / f"{recipe}.safetensors")
        assert any(key.startswith("lora_unet_double_blocks_0_img_mlp_0") for key in kohya)
