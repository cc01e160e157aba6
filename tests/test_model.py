"""Specification of the reference VAL model: shapes, gradients, learning, search, persistence.

Every model here is tiny (a three-level SmallConvPyramid of 8/12/16 channels on 32 px
images, an 8-wide text feature), so each test runs in about a second on one core.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from valfusion.encoders import LSTMTextEncoder, SmallConvPyramid, Vocabulary
from valfusion.layers import COMPOSERS, CompositeAttention, MultiLevelComposer
from valfusion.losses import HierarchicalMatchingLoss
from valfusion.metrics import recall_at_k
from valfusion.models import VAL, CompositionOutput, VALConfig

TEXTS = ("make it red", "make it blue", "add a circle", "remove the square")
VOCAB = Vocabulary.from_texts(TEXTS)
CHANNELS = (8, 12, 16)
EMBEDDING = sum(CHANNELS)
SIZE = 32
FEATURE_SIZES = [(8, 8), (4, 4), (2, 2)]  # SmallConvPyramid strides 4, 8, 16
TEXT_DIM = 8
BATCH = len(TEXTS)
COMPOSERS_WITHOUT_ATTENTION = tuple(c for c in COMPOSERS if not c.startswith("val"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine's two cores are shared by several processes; with more than one
    # intra-op thread these tiny models spend most of their time waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(composer: str = "val", **overrides) -> VALConfig:
    options = {
        "vocab_size": len(VOCAB),
        "composer": composer,
        "backbone_channels": CHANNELS,
        "image_size": SIZE,
        "word_dim": 8,
        "text_hidden_dim": 16,
        "text_dim": TEXT_DIM,
        "text_dropout": 0.0,
    } | overrides
    return VALConfig(**options)


def tiny_model(composer: str = "val", **overrides) -> VAL:
    return VAL(tiny_config(composer, **overrides), vocabulary=VOCAB)


def images(batch: int = BATCH, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 3, size, size)


def encoded(texts=TEXTS) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(VOCAB.encode(list(texts)))


def missing_gradients(model: nn.Module) -> set[str]:
    """The parameters that got no gradient at all."""
    return {n for n, p in model.named_parameters() if p.grad is None}


# ---------------------------------------------------------------------- shapes


@pytest.mark.parametrize("composer", COMPOSERS)
def test_compose_returns_one_unit_norm_embedding_per_query(composer):
    model = tiny_model(composer).eval()
    with torch.no_grad():
        out = model.compose(images(), *encoded())
    assert out.shape == (BATCH, EMBEDDING)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(BATCH))


@pytest.mark.parametrize("composer", COMPOSERS)
def test_encode_image_returns_one_unit_norm_embedding_per_image(composer):
    model = tiny_model(composer).eval()
    with torch.no_grad():
        out = model.encode_image(images())
    assert out.shape == (BATCH, EMBEDDING)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(BATCH))


@pytest.mark.parametrize("composer", COMPOSERS)
def test_compose_levels_are_unit_norm_with_the_backbone_channels(composer):
    model = tiny_model(composer).eval()
    with torch.no_grad():
        out = model.compose(images(), *encoded(), return_levels=True)
    assert isinstance(out, CompositionOutput)
    assert [tuple(level.shape) for level in out.levels] == [(BATCH, c) for c in CHANNELS]
    for level in out.levels:
        torch.testing.assert_close(level.norm(dim=1), torch.ones(BATCH))
    assert out.attention is None


def test_encode_image_levels_have_the_backbone_channels():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model.encode_image(images(), return_levels=True)
    assert [tuple(level.shape) for level in out.levels] == [(BATCH, c) for c in CHANNELS]


@pytest.mark.parametrize("composer", ["val", "val_official"])
def test_val_composers_return_attention_maps_of_every_level(composer):
    model = tiny_model(composer).eval()
    with torch.no_grad():
        out = model.compose(images(), *encoded(), return_attention=True)
    assert len(out.attention) == len(CHANNELS)
    for attention, channels, (h, w) in zip(out.attention, CHANNELS, FEATURE_SIZES):
        assert isinstance(attention, CompositeAttention)
        assert attention.channel_gate.shape == (BATCH, channels, 1, 1)
        assert attention.spatial_gate.shape == (BATCH, 1, h, w)
        assert attention.joint_attention.shape == (BATCH, channels, h, w)
        assert attention.self_attention.shape == (BATCH, 2, h * w, h * w)


@pytest.mark.parametrize("composer", COMPOSERS_WITHOUT_ATTENTION)
def test_composers_without_attention_maps_return_none_per_level(composer):
    model = tiny_model(composer).eval()
    with torch.no_grad():
        out = model.compose(images(), *encoded(), return_attention=True)
    assert out.attention == [None] * len(CHANNELS)


def test_asking_for_attention_does_not_change_the_embedding():
    model = tiny_model().eval()
    x, (tokens, lengths) = images(), encoded()
    with torch.no_grad():
        plain = model.compose(x, tokens, lengths)
        with_attention = model.compose(x, tokens, lengths, return_attention=True)
    torch.testing.assert_close(with_attention.embedding, plain)


def test_composer_kwargs_reach_every_level():
    model = tiny_model(composer_kwargs={"num_heads": 4}).eval()
    with torch.no_grad():
        out = model.compose(images(), *encoded(), return_attention=True)
    assert [a.self_attention.shape[1] for a in out.attention] == [4, 4, 4]


# ---------------------------------------------------------------------- the public parts


class HandBuiltVAL(nn.Module):
    """The model restated from public parts: pyramid, LSTM encoder, one composer per level,
    then mean-pooled, L2-normalised levels concatenated and scaled by 1/sqrt(L)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = SmallConvPyramid(CHANNELS)
        self.text_encoder = LSTMTextEncoder(
            len(VOCAB), word_dim=8, hidden_dim=16, out_dim=TEXT_DIM, dropout=0.0
        )
        self.composer = MultiLevelComposer.build("val", CHANNELS, TEXT_DIM)

    @staticmethod
    def levels(maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [F.normalize(m.mean(dim=(2, 3)), dim=1) for m in maps]

    def query_levels(self, x, tokens, lengths) -> list[torch.Tensor]:
        return self.levels(self.composer(self.backbone(x), self.text_encoder(tokens, lengths)))

    def compose(self, x, tokens, lengths) -> torch.Tensor:
        levels = self.query_levels(x, tokens, lengths)
        return torch.cat(levels, dim=1) / math.sqrt(len(levels))

    def encode_image(self, x) -> torch.Tensor:
        levels = self.levels(self.backbone(x))
        return torch.cat(levels, dim=1) / math.sqrt(len(levels))


@pytest.fixture
def model_and_hand_built() -> tuple[VAL, HandBuiltVAL]:
    model = tiny_model()
    hand = HandBuiltVAL()
    # Strict: the model holds no state beyond these public parts.
    hand.load_state_dict(model.state_dict())
    return model, hand


def test_query_embeddings_equal_a_model_built_by_hand_from_public_parts(model_and_hand_built):
    model, hand = (m.eval() for m in model_and_hand_built)
    x, (tokens, lengths) = images(), encoded()
    with torch.no_grad():
        torch.testing.assert_close(
            model.compose(x, tokens, lengths), hand.compose(x, tokens, lengths)
        )


def test_image_embeddings_equal_a_model_built_by_hand_from_public_parts(model_and_hand_built):
    model, hand = (m.eval() for m in model_and_hand_built)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), hand.encode_image(x))


def test_loss_is_hierarchical_matching_of_the_level_embeddings(model_and_hand_built):
    model, hand = model_and_hand_built
    refs, targets, (tokens, lengths) = images(), images(), encoded()
    expected = HierarchicalMatchingLoss()(
        hand.query_levels(refs, tokens, lengths), hand.levels(hand.backbone(targets))
    )
    out = model.compute_loss(refs, tokens, lengths, targets)
    torch.testing.assert_close(out.total, expected.total)
    assert out.semantic is None


# ---------------------------------------------------------------------- gradients


@pytest.mark.parametrize("composer", COMPOSERS)
def test_every_trainable_parameter_gets_a_gradient_from_the_loss(composer):
    # float64, so that gradients that vanish in exact arithmetic are separated from real
    # ones by many orders of magnitude on any CPU: in float32, rounding decides whether
    # they come out as exactly 0.0 or as ~1e-7, depending on the machine's kernels.
    torch.manual_seed(0)
    model = tiny_model(composer, semantic_dim=6).double()
    tokens, lengths = encoded()
    side_tokens, side_lengths = encoded(reversed(TEXTS))
    model.compute_loss(
        images().double(), tokens, lengths, images().double(), side_tokens, side_lengths
    ).total.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert missing_gradients(model) == set()
    largest = max(g.abs().max().item() for g in grads.values())
    structural: set[str] = set()
    # The text projection's bias is a per-channel constant that the text encoder's
    # BatchNorm1d (training mode) removes: its gradient is zero in exact arithmetic.
    vanishing = {"text_encoder.proj.bias"}
    if composer.startswith("val"):
        # w_sa starts at 0 and multiplies the self-attentional branch: its gradient is an
        # exact product with 0.0, hence exactly zero in floating point too. w_sa itself
        # gets a gradient, and the branch follows once it moves.
        structural = {n for n in grads if ".self_attention." in n}
        assert structural and all(not grads[n].any() for n in structural)
        # With w_sa = 0 each level's output is w_ja * F_ja and the level embedding is
        # L2-normalised, so it does not depend on w_ja's scale: w_ja's gradient is zero in
        # exact arithmetic.
        w_ja = {n for n in grads if n.endswith(".w_ja")}
        assert w_ja
        vanishing |= w_ja
    # Rounding leaves at most n * eps * largest in a cancelling sum of n terms, with n far
    # below 1e6 and eps = 2.2e-16: 1e-9 * largest bounds it. Everything else learns, with
    # a gradient above that bound.
    for name in vanishing:
        assert grads[name].abs().max().item() <= 1e-9 * largest, name
    for name in grads.keys() - structural - vanishing:
        assert grads[name].abs().max().item() > 1e-9 * largest, name


def test_self_attention_gets_a_gradient_once_w_sa_is_nonzero():
    torch.manual_seed(0)
    model = tiny_model(composer_kwargs={"w_sa_init": 0.5}).double()
    model.compute_loss(images().double(), *encoded(), images().double()).total.backward()
    assert missing_gradients(model) == set()
    grads = {n: p.grad for n, p in model.named_parameters()}
    largest = max(g.abs().max().item() for g in grads.values())
    branch = {n for n in grads if ".self_attention." in n}
    assert branch
    # Above the float64 rounding bound of the previous test: a real gradient, not noise.
    assert all(grads[n].abs().max().item() > 1e-9 * largest for n in branch)


def test_image_only_text_encoder_learns_only_from_side_information():
    model = tiny_model("image_only", semantic_dim=6)
    assert list(model.composer.parameters()) == []
    refs, targets, (tokens, lengths) = images(), images(), encoded()
    text_side = [
        p for n, p in model.named_parameters() if n.startswith(("text_encoder.", "semantic"))
    ]
    model.compute_loss(refs, tokens, lengths, targets).total.backward()
    assert all(p.grad is None for p in text_side)
    model.compute_loss(refs, tokens, lengths, targets, tokens, lengths).total.backward()
    assert all(p.grad is not None and p.grad.any() for p in text_side)


# ---------------------------------------------------------------------- learning


def test_a_few_dozen_steps_bring_recall_at_1_to_one_on_fixed_triplets():
    # 4 reference images x 2 texts: queries sharing an image differ only by their text, so
    # only a model that uses the text can rank all 8 distinct targets first.
    refs = images(4).repeat_interleave(2, dim=0)
    tokens, lengths = encoded(["make it red", "make it blue"] * 4)
    targets = images(8)
    model = tiny_model()

    def recall_at_1() -> float:
        model.eval()
        with torch.no_grad():
            queries = model.compose(refs, tokens, lengths)
            gallery = model.encode_image(targets)
        model.train()
        return recall_at_k(queries, gallery, targets=torch.arange(8), ks=(1,)).recall[1]

    assert recall_at_1() <= 0.5
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(40):
        loss = model.compute_loss(refs, tokens, lengths, targets).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert recall_at_1() == 1.0


# ---------------------------------------------------------------------- search


@pytest.fixture
def search_setup() -> tuple[VAL, torch.Tensor, torch.Tensor]:
    """An eval-mode model, one reference image (3, H, W) and a gallery of 6 images."""
    return tiny_model().eval(), torch.rand(3, SIZE, SIZE), images(6)


def test_search_returns_top_k_gallery_items_sorted_by_cosine_score(search_setup):
    model, image, gallery = search_setup
    result = model.search(image, "make it red", gallery, k=3)
    with torch.no_grad():
        query = model.compose(image[None], *encoded(["make it red"]))
        cosine = F.cosine_similarity(model.encode_image(gallery), query, dim=1)
    expected = sorted(range(6), key=lambda i: -float(cosine[i]))[:3]
    assert result.indices.tolist() == expected
    torch.testing.assert_close(result.scores, cosine[expected])


def test_search_leaves_out_the_excluded_index(search_setup):
    model, image, gallery = search_setup
    ranking = model.search(image, "make it red", gallery, k=6).indices.tolist()
    result = model.search(image, "make it red", gallery, k=6, exclude=ranking[0])
    assert result.indices.tolist() == ranking[1:]


def test_search_clips_k_to_the_gallery_size(search_setup):
    model, image, gallery = search_setup
    result = model.search(image, "make it red", gallery, k=100)
    assert sorted(result.indices.tolist()) == list(range(6))
    assert result.scores.shape == (6,)


def test_search_over_precomputed_embeddings_equals_search_over_images(search_setup):
    model, image, gallery = search_setup
    from_images = model.search(image, "add a circle", gallery, k=4)
    from_embeddings = model.search(image, "add a circle", model.embed_gallery(gallery), k=4)
    assert torch.equal(from_embeddings.indices, from_images.indices)
    torch.testing.assert_close(from_embeddings.scores, from_images.scores)


def test_search_returns_the_query_attention_maps_when_asked(search_setup):
    model, image, gallery = search_setup
    result = model.search(image, "make it red", gallery, k=2, return_attention=True)
    assert len(result.attention) == len(CHANNELS)
    for attention, (h, w) in zip(result.attention, FEATURE_SIZES):
        assert attention.spatial_gate.shape == (1, 1, h, w)
        assert attention.self_attention.shape == (1, 2, h * w, h * w)
    assert model.search(image, "make it red", gallery, k=2).attention is None


def test_search_with_raw_text_equals_search_with_encoded_tokens(search_setup):
    model, image, gallery = search_setup
    from_text = model.search(image, "remove the square", gallery, k=6)
    from_tokens = model.search(image, encoded(["remove the square"]), gallery, k=6)
    assert torch.equal(from_tokens.indices, from_text.indices)
    assert torch.equal(from_tokens.scores, from_text.scores)


def test_search_in_training_mode_leaves_modes_and_statistics_untouched(search_setup):
    model, image, gallery = search_setup
    model.train()
    buffers = [b.clone() for b in model.buffers()]
    model.search(image, "make it red", gallery, k=3)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_search_ranks_the_same_in_training_and_eval_mode(search_setup):
    model, image, gallery = search_setup
    in_eval = model.search(image, "make it blue", gallery, k=6)
    in_training = model.train().search(image, "make it blue", gallery, k=6)
    assert torch.equal(in_training.indices, in_eval.indices)


# ---------------------------------------------------------------------- persistence


def trained_one_step(model: VAL) -> VAL:
    """One SGD step, so weights and batch-norm statistics differ from any fresh model."""
    model.compute_loss(images(), *encoded(), images()).total.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return model.eval()


def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    model = trained_one_step(tiny_model(semantic_dim=6))
    model.save_pretrained(tmp_path)
    loaded = VAL.from_pretrained(tmp_path)
    x, (tokens, lengths) = images(), encoded()
    with torch.no_grad():
        assert torch.equal(loaded.compose(x, tokens, lengths), model.compose(x, tokens, lengths))
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
        assert torch.equal(
            loaded.encode_side_info(tokens, lengths), model.encode_side_info(tokens, lengths)
        )


def test_saved_weights_load_with_torch_load_weights_only(tmp_path):
    model = trained_one_step(tiny_model())
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "model.safetensors")
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in expected)


def test_from_pretrained_restores_config_and_vocabulary(tmp_path):
    model = tiny_model("tirg", semantic_dim=6, composer_kwargs={"hidden_channels": 5})
    model.save_pretrained(tmp_path)
    loaded = VAL.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.vocabulary == VOCAB


def test_from_pretrained_returns_a_model_in_eval_mode(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert not any(m.training for m in VAL.from_pretrained(tmp_path).modules())


def test_saving_without_vocabulary_removes_a_stale_one(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    VAL(tiny_config()).save_pretrained(tmp_path)
    assert VAL.from_pretrained(tmp_path).vocabulary is None


def test_from_pretrained_on_a_directory_without_files_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        VAL.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- configuration


def test_config_round_trips_through_a_json_dict():
    config = VALConfig(
        vocab_size=9,
        composer="tirg",
        backbone_channels=(4, 8),
        semantic_dim=5,
        composer_kwargs={"hidden_channels": 7},
        loss="triplet",
        margin=0.3,
        level_weights=(1.0, 0.5),
    )
    assert VALConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_from_dict_rejects_unknown_keys():
    data = tiny_config().to_dict() | {"dropout_rate": 0.5}
    with pytest.raises(ValueError, match="dropout_rate"):
        VALConfig.from_dict(data)


def test_config_rejects_composer_kwargs_that_cannot_be_saved_as_json():
    with pytest.raises(ValueError, match=r"^composer_kwargs:"):
        VALConfig(vocab_size=5, composer_kwargs={"norm_layer": nn.BatchNorm2d})


def test_level_weights_must_match_the_number_of_levels():
    with pytest.raises(ValueError, match=r"^level_weights:"):
        tiny_model(level_weights=(1.0, 1.0))


def test_a_backbone_other_than_the_configured_one_is_rejected():
    with pytest.raises(ValueError, match=r"^backbone:"):
        VAL(tiny_config(), backbone=SmallConvPyramid((8, 16)))


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def eval_model() -> VAL:
    return tiny_model().eval()


def test_compose_rejects_images_of_the_wrong_rank(eval_model):
    with pytest.raises(ValueError, match=r"^images: expected a 4-D tensor"):
        eval_model.compose(torch.rand(3, SIZE, SIZE), *encoded(TEXTS[:1]))


def test_compose_rejects_images_with_the_wrong_channel_count(eval_model):
    with pytest.raises(ValueError, match=r"^images: expected channels = 3"):
        eval_model.compose(torch.rand(BATCH, 1, SIZE, SIZE), *encoded())


@pytest.mark.parametrize("bad_id", [-1, len(VOCAB)])
def test_compose_rejects_token_ids_outside_the_vocabulary(eval_model, bad_id):
    tokens, lengths = encoded()
    tokens[1, 0] = bad_id
    with pytest.raises(
        ValueError, match=rf"^tokens: expected ids in \[0, vocab_size={len(VOCAB)}\)"
    ):
        eval_model.compose(images(), tokens, lengths)


def test_compose_rejects_zero_lengths(eval_model):
    tokens, lengths = encoded()
    lengths[2] = 0
    with pytest.raises(ValueError, match=r"^lengths: expected values in \[1, T="):
        eval_model.compose(images(), tokens, lengths)


def test_compose_rejects_lengths_longer_than_the_sequence(eval_model):
    tokens, lengths = encoded()
    lengths[0] = tokens.shape[1] + 1
    with pytest.raises(ValueError, match=r"^lengths: expected values in \[1, T="):
        eval_model.compose(images(), tokens, lengths)


def _bad_text(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, lengths = encoded()
    if case == "no steps":
        return tokens[:, :0], lengths
    if case == "id out of range":
        tokens[0, 0] = len(VOCAB)
    else:  # "length past the end"
        lengths[0] = tokens.shape[1] + 1
    return tokens, lengths


@pytest.mark.parametrize("case", ["no steps", "id out of range", "length past the end"])
def test_model_and_its_text_encoder_word_a_bad_text_alike(eval_model, case):
    # One token check serves both; an empty batch used to read differently in each.
    tokens, lengths = _bad_text(case)
    with pytest.raises(ValueError) as from_model:
        eval_model.compose(images(), tokens, lengths)
    with pytest.raises(ValueError) as from_encoder:
        eval_model.text_encoder(tokens, lengths)
    assert str(from_model.value) == str(from_encoder.value)


def test_compose_rejects_a_batch_mismatch_between_images_and_tokens(eval_model):
    with pytest.raises(ValueError, match=r"^tokens: batch size 4 .* images batch size 3"):
        eval_model.compose(images(3), *encoded())


def test_bad_input_is_rejected_before_the_backbone_runs(eval_model):
    calls = []
    handle = eval_model.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"^tokens:"):
            eval_model.compose(images(3), *encoded())
        eval_model.compose(images(), *encoded())
    finally:
        handle.remove()
    assert calls == [1]


def test_val_official_rejects_images_of_another_size():
    model = tiny_model("val_official").eval()
    with pytest.raises(
        ValueError, match=rf"^images: the 'val_official' composer is tied to image_size={SIZE}"
    ):
        model.compose(images(size=2 * SIZE), *encoded())


def test_encode_image_rejects_images_with_the_wrong_channel_count(eval_model):
    with pytest.raises(ValueError, match=r"^images:"):
        eval_model.encode_image(torch.rand(2, 4, SIZE, SIZE))


def test_compute_loss_rejects_a_target_batch_mismatch():
    with pytest.raises(ValueError, match=r"^target_images:"):
        tiny_model().compute_loss(images(), *encoded(), images(3))


def test_compute_loss_rejects_side_tokens_without_side_lengths():
    tokens, lengths = encoded()
    with pytest.raises(ValueError, match=r"^side_lengths:"):
        tiny_model(semantic_dim=6).compute_loss(images(), tokens, lengths, images(), tokens)


def test_compute_loss_rejects_side_information_without_a_semantic_head():
    tokens, lengths = encoded()
    with pytest.raises(ValueError, match=r"^side_tokens:.*semantic_dim"):
        tiny_model().compute_loss(images(), tokens, lengths, images(), tokens, lengths)


def test_search_rejects_more_than_one_reference_image(eval_model):
    with pytest.raises(ValueError, match=r"^image:"):
        eval_model.search(images(2), "make it red", images(3))


def test_search_rejects_an_exclude_index_outside_the_gallery(eval_model):
    with pytest.raises(ValueError, match=r"^exclude: expected a gallery index in \[0, G=3\)"):
        eval_model.search(torch.rand(3, SIZE, SIZE), "make it red", images(3), exclude=3)


def test_search_rejects_gallery_embeddings_of_another_width(eval_model):
    with pytest.raises(ValueError, match=r"^gallery:"):
        eval_model.search(torch.rand(3, SIZE, SIZE), "make it red", torch.rand(5, EMBEDDING + 1))


def test_a_single_query_in_training_mode_is_rejected_naming_tokens():
    # The text encoder's batch norm cannot normalise one sample; eval mode can.
    model = tiny_model()
    with pytest.raises(ValueError, match=r"^tokens: batch size 1 in training mode"):
        model.compose(images(1), *encoded(TEXTS[:1]))
    assert model.eval().compose(images(1), *encoded(TEXTS[:1])).shape == (1, EMBEDDING)
