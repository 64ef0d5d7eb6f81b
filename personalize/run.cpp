// run.cpp — one guarded training run of Personalizer::Impl: read the store through the run's
// own connection, choose the rows, prepare the loss, run the epochs, judge commit vs rollback
// (the policies of detail/training.hpp), then apply the decision in one transaction.
#include <functional>
#include <string>

#include "detail/calibration.hpp"
#include "detail/personalizer_impl.hpp"
#include "detail/upgrade.hpp"

namespace edgetune {

using namespace detail::meta;
using detail::Clock;
using detail::Dataset;

namespace {

bool all_finite(const std::vector<Var>& params) {
    for (const Var& p : params)
        if (!p.value().allFinite()) return false;
    return true;
}

bool all_finite(const OptimizerState& s) {
    for (const auto& slot : s.slots)
        for (const Matrix& m : slot)
            if (!m.allFinite()) return false;
    return true;
}

}  // namespace

TrainReport Personalizer::Impl::retrain_owed(const TrainOptions& retrain) {
    try {
        return run(retrain, Mode::from_base);
    } catch (const DiskFull&) {
        bool released = false;
        {
            std::lock_guard lock(store_mu);
            released = store.release_reserve();
        }
        if (!released) throw;
        return run(retrain, Mode::from_base);
    }
}

// Reads the store, then: rows, loss, epochs, decision (detail/training.hpp), then applies it.
TrainReport Personalizer::Impl::run(const TrainOptions& opts, Mode mode) {
    detail::validate_train_options(opts);
    detail::check_unknown(opts.unknown);
    const Matrix background = detail::background_features(backbone(), opts.unknown);
    // The run's own connection: the app's connection stays free for add() and predict().
    // It never recreates a released reserve: on a full disk that room is what this run needs.
    StoreOptions run_options = store_options;
    run_options.reserve_bytes = 0;
    Run r{.start = Clock::now(), .st = SampleStore::open(path, run_options), .mode = mode};
    SampleStore& st = r.st;
    // A retrain owed by forget() or an upgrade that did not finish (crash, exception) comes
    // first: an incremental update would build on a head that must be dropped.
    if (!st.get_meta(meta_retrain_pending).value_or("").empty()) r.mode = Mode::from_base;
    const bool from_base = r.mode == Mode::from_base;
    // Samples stored through store() get their features here.
    detail::retry_evicted([&] {
        fill_missing_features(st);
        return 0;
    });
    const HeadState base = load_base(st);
    const StoredCheckpoint start_checkpoint =
        from_base ? base_checkpoint(st) : current_checkpoint(st);
    HeadState state = decode(start_checkpoint);
    const std::int64_t trained_upto =
        from_base ? 0 : std::stoll(st.get_meta(meta_trained_upto).value_or("0"));
    r.report.retrained_from_base = from_base;
    Rng rng(opts.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(state.step + 1)));
    // epochs = 0 on a prototype head still enrolls: prepare_loss sets the class means. On
    // another head an incremental run trains nothing, so it reads nothing.
    const bool zero_epochs = opts.epochs == 0 && spec().kind != HeadSpec::Kind::prototype;
    const bool reads_nothing = zero_epochs && !from_base;
    // A bounded replay reads only the new, validation and replayed rows (dataset.cpp).
    const bool bounded = reads_nothing || detail::reads_training_rows(from_base, opts.replay);
    const Dataset data = reads_nothing ? Dataset{} : detail::retry_evicted([&] {
        Rng draw = rng;
        return bounded
                   ? detail::read_training_rows(st, spec(), feature_key, backbone().feature_dim(),
                                                {options.seed, options.validation_fraction},
                                                trained_upto, opts.replay, draw)
                   : load_dataset(st);
    });
    if (!bounded)
        detail::record_split(st, data, feature_key, {options.seed, options.validation_fraction});
    // Such a read holds no older row beyond its draw: the watermark never moves down.
    const std::int64_t max_id =
        std::max(bounded ? trained_upto : 0, data.ids.empty() ? 0 : data.ids.back());
    const detail::RowSelection rows =
        detail::select_rows(data, spec(), trained_upto, opts.replay, rng);
    r.report.train_samples = static_cast<std::int64_t>(rows.train.size());
    r.report.validation_samples = static_cast<std::int64_t>(rows.validation.size());
    if (const auto skip =
            detail::decide_untrained(bounded ? st.count() == 0 : data.ids.empty(),
                                     rows.train.empty() && !reads_nothing, zero_epochs, from_base))
        return apply(r, *skip, base, {.state = &state, .optimizer = {}, .upto = max_id}, rng);

    Head& head = *state.head;
    if (!rows.validation.empty())
        r.report.before = detail::evaluate_rows(head, data, rows.validation);
    // Few-shot classes with no held-out sample (judged on their shots by the decision).
    const std::vector<std::size_t> shots =
        spec().classifies() ? detail::unvalidated_rows(data, rows) : std::vector<std::size_t>{};
    std::optional<Metrics> shots_before;
    if (!shots.empty()) shots_before = detail::evaluate_rows(head, data, shots);
    const detail::LossTerms terms =
        detail::prepare_loss(head, state.seen, data, rows.train, opts, *base.head);
    // Optimizer: continue its state when asked and the kind matches (incremental), else fresh.
    const bool continued = !from_base && opts.optimizer_start == OptimizerStart::continue_stored;
    detail::TrainLoop loop =
        detail::start_loop(head, opts, continued ? &state.optimizer : nullptr, rng, rows.train);
    loop.is_new.assign(data.ids.size(), false);
    for (std::size_t i = 0; i < data.ids.size(); ++i) loop.is_new[i] = data.ids[i] > trained_upto;
    // An interrupted run with this fingerprint continues where its record left off.
    const std::string fingerprint =
        detail::run_fingerprint(opts, start_checkpoint.info.id, trained_upto, data, rows);
    if (const auto record = st.get_meta(meta_resume); record && !record->empty())
        r.report.resumed = detail::load_resume(*record, fingerprint, loop, head, data);
    const auto save_resume = [&](const detail::TrainLoop& l) {
        try {
            st.set_meta(meta_resume, detail::encode_resume(l, head, data, fingerprint));
        } catch (const InvalidArgument&) {
            // NaN/Inf parameters: not a state worth resuming (the decision rolls it back).
        } catch (const DiskFull&) {
            // A record only saves time: a full disk must not stop the run itself.
        }
    };
    const int epochs = opts.epochs - loop.epoch + (loop.inside_epoch ? 1 : 0);
    const detail::LoopStop stop = detail::run_epochs(
        loop, head, data, terms, opts, epochs, r.start, state.step,
        opts.resume_every > 0 ? save_resume : std::function<void(const detail::TrainLoop&)>{});
    r.report.steps = loop.steps;
    r.report.epochs = loop.last_epoch;
    r.report.loss_curve = loop.loss_curve;

    const OptimizerState optimizer_state = loop.optimizer->state();
    const detail::Decision decision =
        judge(r, opts, data, rows, {shots, shots_before}, head, loop, stop, optimizer_state);
    if (decision.action == detail::Action::commit_trained)
        if (spec().classifies())
            calibrate_unknown(r.report, r.prototypes, data, rows, opts.unknown, spec().outputs,
                              background);
    return apply(r, decision, base,
                 {.state = &state,
                  .optimizer = optimizer_state,
                  .step = state.step + loop.steps,
                  .upto = max_id},
                 loop.rng);
}

// The facts the decision table judges (detail::decide), measured on the trained head; a
// rolled-back upgrade's retrain also reverts the upgrade.
detail::Decision Personalizer::Impl::judge(Run& r, const TrainOptions& opts, const Dataset& data,
                                           const detail::RowSelection& rows, const Shots& shots,
                                           Head& head, const detail::TrainLoop& loop,
                                           detail::LoopStop stop,
                                           const OptimizerState& optimizer_state) {
    detail::RunFacts facts{.from_base = r.mode == Mode::from_base,
                           .classifies = spec().classifies(),
                           .tolerance = opts.tolerance,
                           .steps = loop.steps,
                           .stop = stop,
                           .params_finite = all_finite(loop.params),
                           .optimizer_finite = all_finite(optimizer_state),
                           .before = r.report.before};
    if (facts.healthy() && !rows.validation.empty())
        facts.after = r.report.after = detail::evaluate_rows(head, data, rows.validation);
    facts.shots_before = shots.before;
    if (facts.healthy() && shots.before)
        facts.shots_after = detail::evaluate_rows(head, data, shots.rows);
    // A backbone upgrade's retrain must do as well as the previous backbone's head on the same
    // validation samples; until it does, that head stays the committed one.
    if (r.mode == Mode::from_base && facts.after)
        if (auto previous = detail::previous_head_metrics(r.st, spec(), data, rows.validation)) {
            facts.before = r.report.before = previous;
            facts.guard_from_base = true;
        }
    detail::Decision decision = detail::decide(facts);
    if (facts.guard_from_base && decision.outcome == TrainReport::Outcome::rolled_back) {
        decision.reason += "; the backbone upgrade is undone";
        detail::revert_upgrade(r.st, digest);
    }
    return decision;
}

TrainReport Personalizer::Impl::apply(Run& r, const detail::Decision& d, const HeadState& base,
                                      const Trained& trained, const Rng& rng) {
    r.report.outcome = d.outcome;
    r.report.reason = d.reason;
    if (d.drop_after) r.report.after.reset();
    switch (d.action) {
        case detail::Action::commit_trained:
            return commit(r, *trained.state, trained.optimizer, trained.step, trained.upto, rng);
        case detail::Action::commit_base:
            return commit(r, base, {}, 0, 0, rng);
        case detail::Action::commit_base_covering:
            return commit(r, base, {}, 0, trained.upto, rng);
        case detail::Action::log_only:
            break;
    }
    r.report.duration = r.elapsed();
    // A run that ended keeps no record; a cancelled one keeps the record it just wrote.
    Transaction tx = r.st.transaction();
    if (d.outcome != TrainReport::Outcome::cancelled &&
        !r.st.get_meta(meta_resume).value_or("").empty())
        r.st.set_meta(meta_resume, "");
    r.st.append_run(r.report.to_json());
    tx.commit();
    return r.report;
}

// Commits `s` as one transaction: checkpoint, watermark, training log, pruning. A retrain
// from base keeps no older trained checkpoint (they may hold what forget() removed) and
// settles the pending retrain. `upto`: samples up to this id count as trained on.
TrainReport Personalizer::Impl::commit(Run& r, const HeadState& s,
                                       const OptimizerState& optimizer_state, std::int64_t step,
                                       std::int64_t upto, const Rng& rng) {
    r.report.duration = r.elapsed();
    const std::string metrics = r.report.to_json();
    const auto payload = encode(*s.head, optimizer_state, step, s.seen, rng, metrics);
    {
        Transaction tx = r.st.transaction();
        // Pruning first frees the pages the new checkpoint needs: a retrain that a forget owes
        // must commit on a full disk too. A retrain from base keeps no older trained checkpoint
        // (they may hold what forget() removed).
        r.st.prune_checkpoints(r.mode == Mode::from_base ? 0 : 2);
        r.st.save_checkpoint({.kind = CheckpointKind::trained,
                              .step = step,
                              .backbone_digest = digest,
                              .metrics = metrics},
                             payload);
        r.st.set_meta(meta_trained_upto, std::to_string(upto));
        r.st.set_trained_upto(upto);  // retention may now evict what this head learned from
        if (!r.st.get_meta(meta_resume).value_or("").empty()) r.st.set_meta(meta_resume, "");
        if (r.mode == Mode::from_base) {
            r.st.set_meta(meta_retrain_pending, "");
            // An upgrade is settled: the previous backbone's features go with its head.
            if (const auto from = r.st.get_meta(meta_upgrade_from); from && !from->empty()) {
                r.st.keep_only_features(feature_key);
                r.st.set_meta(meta_upgrade_from, "");
                r.st.set_meta(meta_upgrade_from_features, "");
            }
        }
        r.st.append_run(metrics);
        tx.commit();
    }
    publish(s.head);
    publish_calibration(r.report.calibration, r.prototypes);
    return r.report;
}

}  // namespace edgetune
