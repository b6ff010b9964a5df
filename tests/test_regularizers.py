"""The regularizers of issue 17, pinned down: mask shapes and sharing, expectation,
determinism at evaluation, autodiff gradients against a reference with the same masks
(float64), AR/TAR, per-layer widths, NT-ASGD's trigger and averaging."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_lm import cells, checkpoint, loop, lr_rules, memory, model, optim, rundir, runs
from jax_lm import config as config_lib

V, B, T = 11, 3, 6
ALL_ON = dict(locked_dropout=True, dropout_input=0.3, dropout_hidden=0.2, dropout_output=0.4,
              state_dropout=0.25, embed_dropout=0.2, weight_drop=0.5, ar=2.0, tar=1.0)


def _config(cell_name="lstm", **overrides):
    base = dict(vocab_size=V, cell=cells.make_cell(cell_name), num_layers=2, hidden_size=5,
                layer_sizes=(7, 4), embed_size=4, tie_weights=True, init_scale=0.3,
                param_dtype="float64")
    return model.LMConfig(**{**base, **overrides})


def _tokens(seed=0, shape=(B, T)):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.randint(k1, shape, 0, V), jax.random.randint(k2, shape, 0, V)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("locked", [True, False])
def test_masks_have_one_entry_per_sequence_word_type_or_weight_as_documented(locked):
    config = _config("lstm", **{**ALL_ON, "locked_dropout": locked})
    masks = model.draw_masks(jax.random.key(0), config, T, B)
    steps = 1 if locked else T
    assert [m.shape for m in masks.inputs] == [(steps, B, 4), (steps, B, 7), (steps, B, 4)]
    assert masks.embed.shape == (V,)
    assert [m.shape for m in masks.states] == [(B, 7), (B, 4)]          # per sequence
    assert [m.shape for m in masks.weights] == [(7, 4 * 7), (4, 4 * 4)]  # W_h's shape
    rates = [0.3, 0.2, 0.4] + [0.2] + [0.25] * 2 + [0.5] * 2
    for m, p in zip([*masks.inputs, masks.embed, *masks.states, *masks.weights], rates):
        values = set(np.unique(np.asarray(m)).round(12))
        assert values <= {0.0, round(1 / (1 - p), 12)} and len(values) == 2


def test_a_locked_mask_drops_the_same_units_at_every_step_of_a_sequence():
    config = _config("rnn", num_layers=1, layer_sizes=None, hidden_size=4, tie_weights=False,
                     locked_dropout=True, dropout=0.5, output_bias=False)
    params = model.init_lm(jax.random.key(1), config)
    tokens, _ = _tokens()
    h, _ = model.hidden_states(params, tokens, model.init_carry(config, B), config=config,
                               dropout_key=jax.random.key(2))                 # (B, T, H)
    dropped = np.asarray(h) == 0.0
    assert dropped.any() and (dropped == dropped[:, :1]).all()   # shared over T
    assert not (dropped == dropped[:1]).all()                    # not over the batch


def test_masks_keep_the_expectation():
    """E[m] = 1 for every kind: the mean of many draws is 1 within 5 standard errors."""
    p, n = 0.3, 400_000
    m = model.keep_mask(jax.random.key(0), p, (n,), jnp.float64)
    std_err = np.sqrt(p / (1 - p) / n)  # var of m/(1-p) with m ~ Bernoulli(1-p)
    assert abs(float(m.mean()) - 1.0) < 5 * std_err
    config = _config("gru", **ALL_ON)
    draws = [model.draw_masks(jax.random.key(s), config, T, B) for s in range(400)]
    for kind in ("embed", "weights"):
        mean = np.mean([np.mean(jax.tree.leaves(getattr(d, kind))[0]) for d in draws])
        assert abs(mean - 1.0) < 0.05, kind


def test_embedding_dropout_drops_whole_word_types():
    """A dropped type contributes nothing wherever it occurs: its embedding row gets no
    gradient from the lookup; every kept type that occurs gets one."""
    config = _config("lstm", tie_weights=False, embed_dropout=0.5)
    params = model.init_lm(jax.random.key(0), config)
    tokens, targets = _tokens(shape=(4, 8))
    key = jax.random.key(3)

    def loss(embed):
        nll, _ = model.token_nll({**params, "embed": embed}, tokens, targets,
                                 model.init_carry(config, 4), config=config, dropout_key=key)
        return nll.sum()

    grad_rows = np.abs(np.asarray(jax.grad(loss)(params["embed"]))).sum(1)
    kept = np.asarray(model.draw_masks(key, config, 8, 4).embed) > 0
    present = np.isin(np.arange(V), np.asarray(tokens))
    assert (present & ~kept).any() and (present & kept).any()
    assert (grad_rows[present & ~kept] == 0).all() and (grad_rows[present & kept] > 0).all()


@pytest.mark.parametrize("cell_name", sorted(cells.CELLS))
def test_evaluation_draws_no_mask_and_training_is_reproducible_by_key(cell_name):
    on, off = _config(cell_name, **ALL_ON), _config(cell_name)
    params = model.init_lm(jax.random.key(0), on)
    tokens, targets = _tokens()
    carry = model.init_carry(on, B)
    nll = functools.partial(model.nll_and_penalty, params, tokens, targets, carry)
    evaluated, penalty, _ = nll(config=on)
    np.testing.assert_array_equal(evaluated, nll(config=off)[0])   # no mask at evaluation
    trained = nll(config=on, dropout_key=jax.random.key(5))
    again = nll(config=on, dropout_key=jax.random.key(5))
    other = nll(config=on, dropout_key=jax.random.key(6))
    jax.tree.map(np.testing.assert_array_equal, trained, again)
    assert not np.allclose(trained[0], evaluated) and not np.allclose(trained[0], other[0])
    assert float(penalty) > 0 and float(trained[1]) > 0


# ---------------------------------------------------------------- gradients


def _reference_loss(params, tokens, targets, carry, masks, config, pad):
    """Token-mean NLL + AR + TAR of the masked model, written out step by step.

    Independent of `model._run_layers`: a Python loop over time with the masks applied
    where the definitions say (embedding rows, layer inputs, W_h, h_{t-1} in the
    recurrent matmul, the output projection's input); padding holds the state.
    """
    cell = config.cell
    emb = params["embed"]
    x = emb[tokens.T] * masks.embed[tokens.T][..., None]          # (T, B, E)
    raw = None
    for layer, (lp, c) in enumerate(zip(params["layers"], carry)):
        x = x * masks.inputs[layer]
        w_h = lp["w_h"] * masks.weights[layer]
        outs = []
        for t in range(x.shape[0]):
            xw = x[t] @ lp["w_x"] + (cells.lead(lp["b"], 2) if "b" in lp else 0.0)
            hw = (cell.output(c) * masks.states[layer]) @ w_h
            new, h = cell.update(lp, c, xw, hw)
            keep = pad[:, t][:, None]
            c = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, c)
            outs.append(cell.output(c))
        raw = x = jnp.stack(outs)                                   # (T, B, H_l)
    dropped = x * masks.inputs[-1]
    logits = dropped @ emb.T + cells.lead(params["out"]["b"], 3)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets.T)
    valid = pad.T.astype(x.dtype)                                   # (T, B)
    loss = (nll * valid).sum() / valid.sum()
    ar = (dropped ** 2 * valid[..., None]).sum() / (valid.sum() * x.shape[-1])
    pairs = valid[1:] * valid[:-1]
    tar = (((raw[1:] - raw[:-1]) ** 2) * pairs[..., None]).sum() / (pairs.sum() * x.shape[-1])
    return loss + config.ar * ar + config.tar * tar


@pytest.mark.parametrize("state_dropout", [0.0, 0.25])
@pytest.mark.parametrize("cell_name", sorted(cells.CELLS))
def test_gradient_with_fixed_masks_equals_the_masked_models_autodiff_gradient(
        cell_name, state_dropout):
    """Every switch on, from a carried state, with padding: the library's loss and
    gradient equal the step-by-step reference's, in float64. Without recurrent dropout
    the layers take `jax_lm.fast_scan`'s backward pass; with it, `jax.grad` of the scan."""
    config = _config(cell_name, **{**ALL_ON, "state_dropout": state_dropout})
    params = model.init_lm(jax.random.key(0), config)
    tokens, targets = _tokens()
    carry = jax.tree.map(lambda z: z + 0.1, model.init_carry(config, B))  # a carried state
    pad = jnp.ones((B, T), bool).at[0, 4:].set(False).at[2, 5:].set(False)
    key = jax.random.key(7)
    masks = model.draw_masks(key, config, T, B)
    if not state_dropout:  # the reference multiplies by ones
        masks = masks._replace(states=tuple(jnp.ones((B, h)) for h in config.sizes))

    def library(params):
        nll, penalty, _ = model.nll_and_penalty(params, tokens, targets, carry, config=config,
                                                mask=pad, dropout_key=key)
        return nll.sum() / pad.sum() + penalty

    reference = functools.partial(_reference_loss, tokens=tokens, targets=targets, carry=carry,
                                  masks=masks, config=config, pad=pad)
    value, grads = jax.value_and_grad(library)(params)
    ref_value, ref_grads = jax.value_and_grad(reference)(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13),
                 grads, ref_grads)


def test_a_population_members_traced_dropout_rate_equals_its_own_config():
    """Members differ in model.dropout (an input of the vmapped step): a member's loss and
    gradient equal those of the model built with its rate, every other switch on."""
    rates = jnp.array([0.1, 0.45])
    base = {k: v for k, v in ALL_ON.items() if not k.startswith("dropout_")}
    shared = _config("lstm", dropout=0.45, **base)
    params = model.init_lm(jax.random.key(0), shared)
    tokens, targets = _tokens()
    carry = model.init_carry(shared, B)
    key = jax.random.key(4)

    def loss(params, config, rate=None):
        nll, penalty, _ = model.nll_and_penalty(params, tokens, targets, carry, config=config,
                                                dropout_key=key, dropout_rate=rate)
        return nll.mean() + penalty

    together = jax.vmap(jax.value_and_grad(loss), in_axes=(None, None, 0))(params, shared, rates)
    for i, rate in enumerate([0.1, 0.45]):
        alone = jax.value_and_grad(loss)(params, _config("lstm", dropout=rate, **base))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-12),
                     together, alone)


# ---------------------------------------------------------------- AR / TAR


def test_activation_penalty_is_the_mean_square_over_valid_positions_and_pairs():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(T, B, 4))
    dropped = h * (rng.random((T, B, 4)) > 0.5)
    valid = np.ones((T, B), bool)
    valid[4:, 1] = False
    got = model.activation_penalty(jnp.asarray(dropped), jnp.asarray(h), jnp.asarray(valid),
                                   ar=2.0, tar=3.0)
    ar = np.mean([np.mean(dropped[t, b] ** 2) for t in range(T) for b in range(B)
                  if valid[t, b]])
    tar = np.mean([np.mean((h[t, b] - h[t - 1, b]) ** 2) for t in range(1, T)
                   for b in range(B) if valid[t, b] and valid[t - 1, b]])
    np.testing.assert_allclose(float(got), 2.0 * ar + 3.0 * tar, rtol=1e-12)
    zero = model.activation_penalty(jnp.asarray(dropped), jnp.asarray(h), None, ar=0.0, tar=0.0)
    assert float(zero) == 0.0


# ---------------------------------------------------------------- per-layer widths


def test_layers_may_differ_in_width_and_the_last_ties_to_the_embedding():
    config = _config("gru", num_layers=3, layer_sizes=(9, 6, 4), embed_size=4)
    params = model.init_lm(jax.random.key(0), config)
    assert [lp["w_h"].shape for lp in params["layers"]] == [(9, 27), (6, 18), (4, 12)]
    assert [lp["w_x"].shape for lp in params["layers"]] == [(4, 27), (9, 18), (6, 12)]
    assert "w" not in params["out"] and params["embed"].shape == (V, 4)
    assert [c.shape for c in model.init_carry(config, B)] == [(B, 9), (B, 6), (B, 4)]
    logits, _ = model.apply_lm(params, _tokens()[0], model.init_carry(config, B), config=config)
    assert logits.shape == (B, T, V)
    with pytest.raises(ValueError, match="as wide as the last layer"):
        _config("gru", num_layers=3, layer_sizes=(9, 6, 5), embed_size=4)
    with pytest.raises(ValueError, match="3 positive widths"):
        _config("gru", num_layers=3, layer_sizes=(9, 6), embed_size=4)


def test_memory_estimate_counts_each_layer_at_its_own_width():
    c = config_lib.get_config()
    c.model.num_layers, c.model.layer_sizes, c.model.embed_size = 2, "30,10", 10
    c.model.tie_weights = True
    estimate = config_lib.resolve(c)
    params = model.num_params(model.init_lm(jax.random.key(0), config_lib.build_lm_config(
        estimate, 50)))
    assert memory.estimate_memory(estimate, 50)["parameters"] == params * 4


# ---------------------------------------------------------------- NT-ASGD


@pytest.mark.parametrize("history, value, patience, fires", [
    ([5.0, 4.0, 3.0], 3.5, 2, False),     # min(history[:-2]) = 5.0: better
    ([5.0, 4.0, 3.0], 4.5, 2, False),
    ([5.0, 4.0, 3.0], 5.5, 2, True),
    ([5.0, 4.0], 9.0, 2, False),          # not more than `patience` earlier checks
    ([5.0, 4.0, 3.0, 2.0], 3.5, 1, True),  # min of all but the last = 3.0
    ([5.0, 4.0, 3.0, 2.0], 2.5, 1, False),
])
def test_nt_trigger_compares_with_the_best_check_more_than_patience_ago(history, value,
                                                                        patience, fires):
    assert lr_rules.nt_trigger(history, value, patience) is fires


def test_iterate_average_is_the_mean_of_the_iterates_since_it_was_switched_on():
    opt = optim.make_optimizer("sgd", 0.1, average=True)
    params = {"w": jnp.array([1.0, -2.0], jnp.float64)}
    state = opt.init(params)
    grad = lambda p: {"w": p["w"] ** 2 - 0.5}  # noqa: E731
    iterates = []
    for step in range(7):
        if step == 3:
            state = optim.set_hyperparams(state, average=1.0)
        updates, state = opt.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        average = optim.evaluation_params(state, params)["w"]
        if step < 3:
            np.testing.assert_array_equal(average, params["w"])  # the iterate itself
        else:
            iterates.append(np.asarray(params["w"]))
            np.testing.assert_allclose(average, np.mean(iterates, 0), rtol=1e-14)
    plain = optim.make_optimizer("sgd", 0.1)
    assert optim.evaluation_params(plain.init(params), params) is params


def _tiny_run_config(tmp_path, **overrides):
    corpus = tmp_path / "tiny.txt"
    # Training lines repeat one pattern; the validation lines (the last 10%) are random
    # words: fitting the pattern soon makes validation worse, and NT-ASGD's trigger fires.
    random_lines = np.random.default_rng(0).choice(list("abcdef"), size=(5, 12))
    corpus.write_text("a b c d e f a b c d e f\n" * 45
                      + "".join(" ".join(line) + "\n" for line in random_lines))
    settings = {"data.source": str(corpus), "data.cache_dir": str(tmp_path / "cache"),
                "data.level": "word", "data.eos": "<eos>",
                "data.batch_size": 4, "data.seq_len": 8, "model.hidden_size": 16,
                "model.locked_dropout": True, "model.dropout": 0.2, "model.weight_drop": 0.3,
                "model.embed_dropout": 0.1, "model.ar": 1.0, "model.tar": 1.0,
                "train.optimizer": "sgd", "train.learning_rate": 3.0, "train.epochs": 5,
                "train.ntasgd_patience": 1, "train.log_every": 5, "sample.num_samples": 0,
                **overrides}
    return config_lib.apply_overrides(config_lib.get_config(),
                                      {k: str(v) for k, v in settings.items()})


def _fit(config, run_dir, **kwargs):
    return loop.fit(config, run_dir, progress=False, print_fn=lambda _: None, **kwargs)


def _latest_state(run_dir):
    run = runs.load_run(run_dir, "latest")
    return checkpoint.load_checkpoint(checkpoint.latest_path(run_dir),
                                      runs.state_template(run.config, run.lm_config))[0]


def test_ntasgd_run_averages_after_the_trigger_and_resumes_exactly(tmp_path):
    """A run whose validation stalls switches to averaging (logged), is scored with the
    average, keeps it as the best checkpoint, and resumes to the same bits; before the
    trigger its parameters are those of the same run without NT-ASGD."""
    config = _tiny_run_config(tmp_path)
    result = _fit(config, tmp_path / "full")
    records = [json.loads(line) for line in
               (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "valid_nll" in r and "final" not in r]
    switched = [r for r in epochs if "averaging_from" in r]
    assert len(switched) == 1, [r["valid_nll"] for r in epochs]
    at = epochs.index(switched[0])
    history = [r["valid_nll"] for r in epochs[:at]]
    assert lr_rules.nt_trigger(history, epochs[at]["valid_nll"], 1)
    assert not any(lr_rules.nt_trigger([r["valid_nll"] for r in epochs[:j]],
                                       epochs[j]["valid_nll"], 1) for j in range(at))

    best = runs.load_run(tmp_path / "full")  # scored with the average
    assert best.evaluate("valid")["nll"] == pytest.approx(result["valid_nll"], rel=1e-6)
    latest = runs.load_run(tmp_path / "full", "latest")
    state = _latest_state(tmp_path / "full")
    assert int(state.opt_state.inner_state[-1].count) > 0
    jax.tree.map(np.testing.assert_array_equal, latest.params,
                 state.opt_state.inner_state[-1].average)
    assert not np.array_equal(latest.params["out"]["b"], state.params["out"]["b"])

    # Stopped mid-epoch before the trigger: the resumed run must fire it at the same
    # validation (its history is in the checkpoint) and average as the whole run did.
    stop = switched[0]["step"] - 2
    _fit(_tiny_run_config(tmp_path, **{"train.max_steps": stop}), tmp_path / "cut")
    # Until the trigger fires, NT-ASGD changes no parameter: the same run without it
    # (patience 0) holds the same bits at that step.
    _fit(_tiny_run_config(tmp_path, **{"train.max_steps": stop, "train.ntasgd_patience": 0}),
         tmp_path / "off")
    jax.tree.map(np.testing.assert_array_equal, _latest_state(tmp_path / "off").params,
                 _latest_state(tmp_path / "cut").params)
    _fit(config, tmp_path / "cut", resume=True)
    cut = _latest_state(tmp_path / "cut")
    plain = lambda s: s._replace(rng=jax.random.key_data(s.rng))  # noqa: E731
    jax.tree.map(np.testing.assert_array_equal, plain(cut), plain(state))


def test_population_members_regularize_and_switch_to_averaging_as_their_single_runs(
        tmp_path):
    """Every switch on, members differing in learning rate and dropout: one member's
    validation stalls and it averages, the other's does not; each equals its single run."""
    members = [{"train.learning_rate": 3.0, "model.dropout": 0.1},
               {"train.learning_rate": 0.001, "model.dropout": 0.3}]
    common = {"model.param_dtype": "float64", "model.state_dropout": 0.2}
    configs = [_tiny_run_config(tmp_path, **common, **m) for m in members]
    together = loop.fit_population(configs, [tmp_path / "p0", tmp_path / "p1"],
                                   progress=False, print_fn=lambda _: None)
    switched = []
    for i, config in enumerate(configs):
        alone = _fit(config, tmp_path / f"a{i}")
        assert together[i]["valid_nll"] == pytest.approx(alone["valid_nll"], rel=1e-12)
        logs = [[(r["step"], r.get("train_loss"), r.get("valid_nll"), r.get("averaging_from"))
                 for r in rundir.read_records(tmp_path / name / rundir.METRICS)
                 if "final" not in r] for name in (f"p{i}", f"a{i}")]
        assert [r[0] for r in logs[0]] == [r[0] for r in logs[1]]
        assert [r[3] for r in logs[0]] == [r[3] for r in logs[1]]
        numbers = [np.array([r[1:3] for r in log], float) for log in logs]  # None: nan
        np.testing.assert_allclose(*numbers, rtol=1e-12)
        switched.append(any(r[3] is not None for r in logs[0]))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                     runs.load_run(tmp_path / f"p{i}").params,
                     runs.load_run(tmp_path / f"a{i}").params)
    assert switched == [True, False]


def test_ntasgd_without_a_validation_split_is_one_clear_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text("a b c\n" * 20)
    config = _tiny_run_config(tmp_path, **{"data.source": str(tmp_path / "corpus")})
    with pytest.raises(config_lib.ConfigError, match="train.ntasgd_patience=1 watches the "
                       "validation loss, but .* has no validation split"):
        _fit(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
