// keyboard.cpp — next-word suggestions that learn the user's vocabulary, on the device.
//
// The app ships a small word-level language model: a backbone (an embedding of the previous
// 3 words + an MLP) and a softmax classifier over a closed vocabulary, pretrained jointly with
// Adam on "general" English text: every Debian fortune file except the user's category. The
// backbone is then frozen, and the head (a linear softmax layer over the vocabulary) is what
// the device personalizes from the sentences the user types, stored with Personalizer::add,
// with a reservoir replay of stored general text so the head does not forget general English.
//
// The user is the `definitions` fortune file: formulaic ("Abstainer, n.: A weak person who
// yields to the temptation of...", "X's Law: ...", dozens of quotes attributed to Ambrose
// Bierce's "The Devil's Dictionary") and unlike the rest of the corpus, which is what a
// head-only update can learn (docs/design.md: word-level keyboards gain most on formulaic,
// distinctive users). Its entries are split into text the user has typed (stored) and held-out text
// the user types later (measured). General text is split the same way into training and held-out.
//
// Printed: top-1 / top-3 next-word accuracy and perplexity on the user's held-out text and on
// general held-out text (forgetting), before and after personalization, the training report,
// and the top-3 suggestions for a few prompts before and after. Writes keyboard.svg (bar
// charts of the same numbers), keyboard.db (the personalization database), keyboard.etb (the
// frozen backbone) and keyboard.vocab (its vocabulary, one word a line: line i is token id i),
// so the CLI takes over (the first command records the backbone and the vocabulary):
//   edgetune info --db keyboard.db --backbone keyboard.etb --vocabulary keyboard.vocab
//   edgetune add --db keyboard.db --text "a sentence the user typed"
//   edgetune train --db keyboard.db --recipe keyboard
//   edgetune predict --db keyboard.db --text "the last words"
// Exits non-zero unless the user's top-3 accuracy improves and general top-3 accuracy keeps at
// least 80% of its value (no collapse).
//
// The device's head starts from the shipped classifier's weights (PersonalizerOptions::
// initial_head): "before personalization" is the shipped model, logit for logit. The app keeps
// a buffer of general text for replay; the first update trains on the user's text and that
// buffer (all of it is new to the device's head).
// NOTE (learning rate): with a softmax over thousands of words, Adam at lr 1e-3 overshoots on
// the personalization update: for the same gain on the user's text it raises perplexity on
// general text (forgetting) several times more than SGD with momentum at lr 0.02 did in our
// runs, the default here. The full run measures both on copies of the same database;
// --optimizer/--lr/--epochs try others. The library's default (TrainOptions::optimizer with
// auto_lr) makes the same choice for a head this wide: SGD with momentum, at 5e-3 over its
// default 10 epochs of batches of 32 (--defaults: within 1% of this tuned run's perplexities).
//
// Usage: keyboard [--small] [--fortunes DIR] [--optimizer sgd|adam] [--lr LR] [--epochs N]
//                 [--defaults]
//   --defaults: the personalization update with all-default TrainOptions (only the replay
//   policy and the seed set; --optimizer/--lr/--epochs ignored, no Adam comparison): what an
//   app gets without tuning.
//   --small: the CI size (vocabulary 1000, fewer samples, no Adam comparison); runs in the
//   current directory (it writes the files above there).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "args.hpp"
#include "fortunes.hpp"
#include "personalize.hpp"
#include "svg.hpp"

using namespace edgetune;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* user_category = "definitions";
constexpr std::int64_t context_len = 3;
constexpr float pretrain_lr = 2e-3f;  // Adam, cosine-decayed to pretrain_min_lr
constexpr float pretrain_min_lr = 1e-4f;

struct Config {
    std::size_t vocab;  // V, including <s> and <unk>
    Index embed_dim, hidden, features;
    std::size_t pretrain_samples;  // general samples seen by pretraining (one pass)
    std::size_t stored_general;    // general samples stored in the database for replay
    std::size_t eval_general;      // general held-out samples measured
    std::size_t eval_user;         // user held-out samples measured
    std::size_t user_entries;      // user entries used (typed + held out); 0 = all
    int personalize_epochs;
    std::int64_t replay;  // general samples replayed per personalization
    bool compare_adam;    // also measure Adam at lr 1e-3 on a copy
};

constexpr Config full_config{.vocab = 3000,
                             .embed_dim = 32,
                             .hidden = 256,
                             .features = 64,
                             .pretrain_samples = 240000,
                             .stored_general = 8000,
                             .eval_general = 4000,
                             .eval_user = 0,
                             .user_entries = 0,
                             .personalize_epochs = 4,
                             .replay = 8000,
                             .compare_adam = true};
constexpr Config small_config{.vocab = 1000,
                              .embed_dim = 16,
                              .hidden = 128,
                              .features = 48,
                              .pretrain_samples = 60000,
                              .stored_general = 2000,
                              .eval_general = 1000,
                              .eval_user = 1500,
                              .user_entries = 600,
                              .personalize_epochs = 4,
                              .replay = 2000,
                              .compare_adam = false};

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

// The fortunes corpus as next-word samples. The vocabulary comes from general training text
// only: it is what the app ships, so some of the user's words are <unk>.
struct Corpus {
    fortunes::Vocabulary vocab;
    fortunes::NextWordSamples general_train{}, general_test{}, user_typed{}, user_test{};
    std::size_t general_entries = 0, user_typed_entries = 0, user_test_entries = 0;
    double general_unknown = 0.0, user_unknown = 0.0;
};

Corpus load_corpus(const std::string& dir, const Config& cfg, Rng& rng) {
    std::vector<std::string> general;
    for (const std::string& c : fortunes::list_categories(dir))
        if (c != user_category) general.push_back(c);
    std::vector<std::vector<std::string>> general_train, general_test, user_typed, user_test;
    for (const fortunes::Entry& e : fortunes::read_entries(dir, general))
        (rng.uniform() < 0.9f ? general_train : general_test).push_back(fortunes::tokenize(e.text));
    std::vector<fortunes::Entry> user = fortunes::read_category(dir, user_category);
    for (std::size_t i = user.size(); i > 1; --i) std::swap(user[i - 1], user[rng.below(i)]);
    if (cfg.user_entries > 0 && user.size() > cfg.user_entries) user.resize(cfg.user_entries);
    // 60% of the user's entries were typed (stored); the other 40% are what they type next.
    const std::size_t typed = user.size() * 6 / 10;
    for (std::size_t i = 0; i < user.size(); ++i)
        (i < typed ? user_typed : user_test).push_back(fortunes::tokenize(user[i].text));

    Corpus c{.vocab = fortunes::Vocabulary::build(general_train, cfg.vocab)};
    c.general_train = fortunes::make_samples(c.vocab.encode(general_train), context_len);
    c.general_test = fortunes::make_samples(c.vocab.encode(general_test), context_len);
    c.user_typed = fortunes::make_samples(c.vocab.encode(user_typed), context_len);
    c.user_test = fortunes::make_samples(c.vocab.encode(user_test), context_len);
    c.general_entries = general_train.size() + general_test.size();
    c.user_typed_entries = user_typed.size();
    c.user_test_entries = user_test.size();
    c.general_unknown = c.vocab.unknown_rate(general_test);
    c.user_unknown = c.vocab.unknown_rate(user_test);
    return c;
}

// Samples [begin, begin + count) in `order` as stored-sample records.
std::vector<Sample> to_samples(const fortunes::NextWordSamples& s,
                               const std::vector<std::size_t>& order, std::size_t count) {
    std::vector<Sample> out;
    count = std::min(count, order.size());
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i)
        out.push_back({.tokens = s.context_of(order[i]), .label = s.labels[order[i]]});
    return out;
}

std::vector<std::size_t> shuffled(std::size_t n, Rng& rng) {
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    return order;
}

std::vector<std::size_t> identity(std::size_t n) {
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    return order;
}

// Pretraining: backbone + Linear(F, V) classifier, jointly, one pass of Adam with a cosine
// decay. The classifier is the app's shipped next-word head.
struct Pretrained {
    std::unique_ptr<BackboneNet> net;
    std::unique_ptr<Linear> classifier;
};

Pretrained pretrain(const Corpus& corpus, const Config& cfg, Rng& rng) {
    const BackboneConfig bc{.input = InputSpec::token_sequence(context_len),
                            .vocab = static_cast<std::int64_t>(corpus.vocab.size()),
                            .embed_dim = cfg.embed_dim,
                            .hidden = {cfg.hidden, cfg.features},
                            .activation = Activation::relu};
    Pretrained p{
        std::make_unique<BackboneNet>(bc, rng),
        std::make_unique<Linear>(cfg.features, static_cast<Index>(corpus.vocab.size()), rng)};
    std::vector<Var> params = p.net->parameters();
    for (const Var& v : p.classifier->parameters()) params.push_back(v);

    const std::size_t batch = 128;
    const std::size_t n = std::min(cfg.pretrain_samples, corpus.general_train.size());
    const auto steps = static_cast<std::int64_t>((n + batch - 1) / batch);
    Adam adam(params, {.lr = pretrain_lr});
    Schedule schedule(adam, CosineSchedule{.total_steps = steps, .min_lr = pretrain_min_lr});
    const std::vector<std::size_t> order = shuffled(corpus.general_train.size(), rng);

    const auto start = Clock::now();
    IdList tokens, labels;
    double window_loss = 0.0;
    std::int64_t window = 0, step = 0;
    for (std::size_t at = 0; at < n; at += batch, ++step) {
        tokens.clear();
        labels.clear();
        for (std::size_t i = at; i < std::min(n, at + batch); ++i) {
            const IdList ctx = corpus.general_train.context_of(order[i]);
            tokens.insert(tokens.end(), ctx.begin(), ctx.end());
            labels.push_back(corpus.general_train.labels[order[i]]);
        }
        adam.zero_grad();
        Var loss = cross_entropy(p.classifier->forward(p.net->forward(tokens)), labels);
        backward(loss);
        adam.step();
        schedule.step();
        window_loss += loss.item();
        ++window;
        if ((step + 1) % std::max<std::int64_t>(1, steps / 5) == 0 || step + 1 == steps) {
            std::printf("  step %5lld/%lld  loss %.3f  (%.1f s)\n",
                        static_cast<long long>(step + 1), static_cast<long long>(steps),
                        window_loss / static_cast<double>(window), seconds_since(start));
            window_loss = 0.0;
            window = 0;
        }
    }
    p.net->eval();
    return p;
}

// Next-word quality on labelled samples.
struct Score {
    double top1 = 0.0, top3 = 0.0, perplexity = 0.0;
};

// The pretrained classifier on its own (no Personalizer): the number the app shipped with.
Score score_classifier(Pretrained& p, const std::vector<Sample>& samples) {
    NoGrad no_grad;
    Score s;
    double loss = 0.0;
    constexpr std::size_t chunk = 1024;
    for (std::size_t at = 0; at < samples.size(); at += chunk) {
        IdList tokens;
        const std::size_t end = std::min(samples.size(), at + chunk);
        for (std::size_t i = at; i < end; ++i)
            tokens.insert(tokens.end(), samples[i].tokens.begin(), samples[i].tokens.end());
        const Matrix logits = p.classifier->forward(p.net->forward(tokens)).value();
        for (std::size_t i = at; i < end; ++i) {
            const auto r = static_cast<Index>(i - at);
            const float y = logits(r, samples[i].label);
            const float mx = logits.row(r).maxCoeff();
            loss += mx + std::log((logits.row(r).array() - mx).exp().sum()) - y;
            const auto higher = (logits.row(r).array() > y).count();
            s.top1 += higher == 0;
            s.top3 += higher < 3;
        }
    }
    const auto n = static_cast<double>(samples.size());
    return {s.top1 / n, s.top3 / n, std::exp(loss / n)};
}

// What the app sees: evaluate() for loss and top-1, predict(k = 3) for top-3.
Score score(const Personalizer& p, const std::vector<Sample>& samples) {
    const Metrics m = p.evaluate(samples);
    std::size_t hits = 0;
    for (const Sample& s : samples)
        for (const Prediction& pred : p.predict(s, 3)) hits += pred.label == s.label;
    return {m.accuracy, static_cast<double>(hits) / static_cast<double>(samples.size()),
            std::exp(m.loss)};
}

void print_score(const char* what, const Score& s, std::size_t n) {
    std::printf("  %-34s top-1 %5.1f%%  top-3 %5.1f%%  perplexity %7.1f  (%zu samples)\n", what,
                100.0 * s.top1, 100.0 * s.top3, s.perplexity, n);
}

// The prompt's last `context_len` tokens (padded with <s>) as a sample.
Sample prompt_sample(const fortunes::Vocabulary& vocab, const std::string& prompt) {
    IdList ids(static_cast<std::size_t>(context_len), fortunes::Vocabulary::boundary);
    for (const std::string& t : fortunes::tokenize(prompt)) {
        if (t == fortunes::boundary_token) continue;  // prompts are unfinished sentences
        std::rotate(ids.begin(), ids.begin() + 1, ids.end());
        ids.back() = vocab.id(t);
    }
    return {.tokens = ids};
}

// The prompt's context as the model sees it (rare words are <unk>).
std::string seen_context(const fortunes::Vocabulary& vocab, const std::string& prompt) {
    std::string out;
    for (std::int32_t id : prompt_sample(vocab, prompt).tokens)
        out += (out.empty() ? "" : " ") + vocab.word(id);
    return out;
}

std::string suggestions(const Personalizer& p, const fortunes::Vocabulary& vocab,
                        const std::string& prompt) {
    std::string out;
    char buf[64];
    for (const Prediction& pred : p.predict(prompt_sample(vocab, prompt), 3)) {
        std::snprintf(buf, sizeof buf, "%s%s %.2f", out.empty() ? "" : ", ",
                      vocab.word(pred.label).c_str(), static_cast<double>(pred.probability));
        out += buf;
    }
    return out;
}

void remove_db(const std::string& path) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        std::filesystem::remove(path + suffix);
}

std::string optimizer_name(const OptimizerSpec& spec) {
    char buf[64];
    if (const auto* sgd = std::get_if<SgdOptions>(&spec))
        std::snprintf(buf, sizeof buf, "SGD lr %g momentum %g", static_cast<double>(sgd->lr),
                      static_cast<double>(sgd->momentum));
    else if (const auto* adam = std::get_if<AdamOptions>(&spec); adam && adam->lr == auto_lr)
        std::snprintf(buf, sizeof buf, "Adam lr auto (on a wide head: SGD lr 0.005, momentum 0.9)");
    else if (adam)
        std::snprintf(buf, sizeof buf, "Adam lr %g", static_cast<double>(adam->lr));
    else
        std::snprintf(buf, sizeof buf, "AdamW lr %g",
                      static_cast<double>(std::get<AdamWOptions>(spec).lr));
    return buf;
}

// defaults: every option as declared but the replay policy and the seed (the protocol).
TrainOptions personalize_options(const Config& cfg, OptimizerSpec optimizer, bool defaults) {
    if (defaults) return {.seed = 7, .replay = Replay::reservoir(cfg.replay)};
    TrainOptions o;
    o.epochs = cfg.personalize_epochs;
    o.batch = 64;
    o.optimizer = optimizer;
    o.replay = Replay::reservoir(cfg.replay);
    o.seed = 7;
    return o;
}

void print_report(const TrainReport& r) {
    static const char* outcomes[] = {"committed", "rolled back", "nothing to do", "cancelled"};
    std::printf(
        "  %s (%s): %lld steps, %d epochs, %lld training samples, %lld validation, %.1f s\n",
        outcomes[static_cast<int>(r.outcome)], r.reason.c_str(), static_cast<long long>(r.steps),
        r.epochs, static_cast<long long>(r.train_samples),
        static_cast<long long>(r.validation_samples),
        static_cast<double>(r.duration.count()) / 1000.0);
    if (r.before && r.after)
        std::printf("  validation accuracy %.1f%% -> %.1f%%, loss %.3f -> %.3f\n",
                    100.0 * r.before->accuracy, 100.0 * r.after->accuracy, r.before->loss,
                    r.after->loss);
}

}  // namespace

int main(int argc, char** argv) {
    bool small = false;
    std::string dir = fortunes::default_dir;
    std::string optimizer = "sgd";
    float lr = 0.0f;
    int epochs = 0;
    bool defaults = false;
    const char* const usage =
        "usage: keyboard [--small] [--fortunes DIR] [--optimizer sgd|adam] [--lr LR] "
        "[--epochs N] [--defaults]\n";
    try {
        for (examples::Args a(argc, argv); a.next();) {
            if (a.is("--small")) {
                small = true;
            } else if (a.is("--fortunes")) {
                dir = a.text();
            } else if (a.is("--optimizer")) {
                optimizer = a.text();
            } else if (a.is("--lr")) {
                lr = a.real();
            } else if (a.is("--epochs")) {
                epochs = a.integer();
            } else if (a.is("--defaults")) {
                defaults = true;
            } else {
                std::fprintf(stderr, "%s", usage);
                return 2;
            }
        }
    } catch (const InvalidArgument& e) {
        std::fprintf(stderr, "keyboard: %s\n%s", e.what(), usage);
        return 2;
    }
    Config cfg = small ? small_config : full_config;
    if (epochs > 0) cfg.personalize_epochs = epochs;
    const auto start = Clock::now();
    Rng rng(2024);

    // --- 1. Text ---
    const Corpus corpus = load_corpus(dir, cfg, rng);
    std::printf("keyboard: %s mode; user = fortune file '%s'\n", small ? "small" : "full",
                user_category);
    std::printf(
        "text: %zu general entries -> %zu training / %zu held-out next-word samples;\n"
        "      user: %zu typed entries (%zu samples), %zu held-out entries (%zu samples)\n",
        corpus.general_entries, corpus.general_train.size(), corpus.general_test.size(),
        corpus.user_typed_entries, corpus.user_typed.size(), corpus.user_test_entries,
        corpus.user_test.size());
    std::printf(
        "vocabulary: %zu ids (<s>, <unk> + the most frequent general words); "
        "<unk> rate %.1f%% general, %.1f%% user\n",
        corpus.vocab.size(), 100.0 * corpus.general_unknown, 100.0 * corpus.user_unknown);

    const std::vector<Sample> general_eval = to_samples(
        corpus.general_test, shuffled(corpus.general_test.size(), rng), cfg.eval_general);
    const std::vector<Sample> user_eval =
        to_samples(corpus.user_test, identity(corpus.user_test.size()),
                   cfg.eval_user > 0 ? cfg.eval_user : corpus.user_test.size());

    // --- 2. Pretraining (done once by the app vendor, not on the device) ---
    std::printf(
        "\npretraining backbone (embed %lld, MLP %lld-%lld) + classifier over %zu words, "
        "Adam lr %g cosine to %g, one pass over %zu samples:\n",
        static_cast<long long>(cfg.embed_dim), static_cast<long long>(cfg.hidden),
        static_cast<long long>(cfg.features), corpus.vocab.size(), static_cast<double>(pretrain_lr),
        static_cast<double>(pretrain_min_lr),
        std::min(cfg.pretrain_samples, corpus.general_train.size()));
    Pretrained pre = pretrain(corpus, cfg, rng);
    const Score shipped_general = score_classifier(pre, general_eval);
    const Score shipped_user = score_classifier(pre, user_eval);
    print_score("pretrained classifier, general", shipped_general, general_eval.size());
    print_score("pretrained classifier, user", shipped_user, user_eval.size());
    const std::shared_ptr<const Backbone> backbone = Backbone::freeze(*pre.net);
    backbone->save("keyboard.etb");
    {
        std::ofstream vocab_file("keyboard.vocab");
        for (std::size_t i = 0; i < corpus.vocab.size(); ++i)
            vocab_file << corpus.vocab.word(static_cast<std::int32_t>(i)) << "\n";
        if (!vocab_file) {
            std::fprintf(stderr, "keyboard: cannot write keyboard.vocab\n");
            return 1;
        }
    }

    // --- 3. On the device: the shipped head over the frozen backbone, general text stored ---
    const std::string db = "keyboard.db";
    remove_db(db);
    PersonalizerOptions options{
        .backbone = backbone,
        .head = HeadSpec::linear(static_cast<std::int64_t>(corpus.vocab.size())),
        .seed = 11,
        // The layout of HeadWeights: Linear's weight is [F x V] and its bias [1 x V] already.
        .initial_head = HeadWeights{.tensors = {{"net.0.weight", pre.classifier->weight.value()},
                                                {"net.0.bias", pre.classifier->bias.value()}},
                                    .backbone_digest = backbone->digest()}};
    auto p = Personalizer::open(db, options);
    auto t = Clock::now();
    const std::vector<Sample> stored_general = to_samples(
        corpus.general_train, shuffled(corpus.general_train.size(), rng), cfg.stored_general);
    p->add(stored_general);
    std::printf(
        "\nopened %s with the shipped head; stored %zu general samples for replay (%.1f s)\n",
        db.c_str(), stored_general.size(), seconds_since(t));

    const Score before_general = score(*p, general_eval);
    const Score before_user = score(*p, user_eval);
    std::printf("\nbefore personalization:\n");
    print_score("general held-out text", before_general, general_eval.size());
    print_score("user held-out text", before_user, user_eval.size());

    // Prompts: the user's formulas (attributions, "Word, n.: A ...", Douglas Coupland's
    // "Generation X: Tales for an Accelerated Culture"), then everyday English.
    const std::vector<std::string> prompts = {"ambrose bierce the", "the devil's", "abstainer n",
                                              "generation x",       "if you have", "i want to"};
    std::vector<std::string> before_suggestions;
    for (const std::string& prompt : prompts)
        before_suggestions.push_back(suggestions(*p, corpus.vocab, prompt));

    // --- 4. The user types: store their sentences, personalize with replay ---
    const std::vector<Sample> typed =
        to_samples(corpus.user_typed, identity(corpus.user_typed.size()), corpus.user_typed.size());
    t = Clock::now();
    p->add(typed);
    std::printf("\nstored %zu samples of the user's typed text (%.1f s)\n", typed.size(),
                seconds_since(t));

    // Measure Adam at lr 1e-3 on a copy of the database first (same data, same replay).
    std::optional<std::pair<Score, Score>> adam_scores;
    const OptimizerSpec adam = AdamOptions{.lr = 1e-3f};
    const OptimizerSpec chosen =
        optimizer == "adam"
            ? OptimizerSpec(AdamOptions{.lr = lr > 0.0f ? lr : 1e-4f})
            : OptimizerSpec(SgdOptions{.lr = lr > 0.0f ? lr : 0.02f, .momentum = 0.9f});
    if (cfg.compare_adam && !defaults) {
        p.reset();  // close the database so the copy is consistent
        const std::string copy = "keyboard_adam.db";
        remove_db(copy);
        std::filesystem::copy_file(db, copy);
        if (std::filesystem::exists(db + "-wal"))
            std::filesystem::copy_file(db + "-wal", copy + "-wal");
        {
            auto q = Personalizer::open(copy, options);
            std::printf("personalizing a copy of the database with %s (same replay and epochs):\n",
                        optimizer_name(adam).c_str());
            print_report(q->train(personalize_options(cfg, adam, false)));
            adam_scores = {score(*q, general_eval), score(*q, user_eval)};
        }
        remove_db(copy);
        p = Personalizer::open(db, options);
    }
    const TrainOptions personalize = personalize_options(cfg, chosen, defaults);
    std::printf("personalizing with %s, reservoir replay of %lld general samples, %d epochs%s:\n",
                optimizer_name(personalize.optimizer).c_str(), static_cast<long long>(cfg.replay),
                personalize.epochs, defaults ? " (all-default options)" : "");
    const TrainReport report = p->train(personalize);
    print_report(report);

    const Score after_general = score(*p, general_eval);
    const Score after_user = score(*p, user_eval);
    std::printf("\nafter personalization:\n");
    print_score("general held-out text (forgetting)", after_general, general_eval.size());
    print_score("user held-out text", after_user, user_eval.size());
    if (adam_scores) {
        std::printf("  with %s instead:\n", optimizer_name(adam).c_str());
        print_score("general held-out text (forgetting)", adam_scores->first, general_eval.size());
        print_score("user held-out text", adam_scores->second, user_eval.size());
    }

    std::printf("\nsuggestions (top-3 with probabilities), before -> after:\n");
    for (std::size_t i = 0; i < prompts.size(); ++i)
        std::printf("  \"%s ...\"  (the model sees: %s)\n      before: %s\n      after:  %s\n",
                    prompts[i].c_str(), seen_context(corpus.vocab, prompts[i]).c_str(),
                    before_suggestions[i].c_str(),
                    suggestions(*p, corpus.vocab, prompts[i]).c_str());

    // --- 5. Chart ---
    svg::BarChart accuracy{.title = "Next-word accuracy (held-out text)",
                           .y_label = "accuracy (%)",
                           .series = {"before", "after"}};
    accuracy.groups = {
        {"user top-1", {100.0 * before_user.top1, 100.0 * after_user.top1}},
        {"user top-3", {100.0 * before_user.top3, 100.0 * after_user.top3}},
        {"general top-1", {100.0 * before_general.top1, 100.0 * after_general.top1}},
        {"general top-3", {100.0 * before_general.top3, 100.0 * after_general.top3}}};
    svg::BarChart perplexity{.title = "Perplexity (lower is better)",
                             .y_label = "perplexity",
                             .series = {"before", "after"}};
    perplexity.groups = {{"user", {before_user.perplexity, after_user.perplexity}},
                         {"general", {before_general.perplexity, after_general.perplexity}}};
    perplexity.value_decimals = 0;
    svg::write_file("keyboard.svg", {accuracy, perplexity});
    std::printf("\nwrote keyboard.svg, %s, keyboard.etb and keyboard.vocab; total %.1f s\n",
                db.c_str(), seconds_since(start));

    // --- 6. Success condition ---
    const bool committed = report.outcome == TrainReport::Outcome::committed;
    const bool user_improved = after_user.top3 > before_user.top3;
    const bool general_kept = after_general.top3 >= 0.8 * before_general.top3;
    // The device started from the shipped head: the same perplexity up to the frozen
    // backbone's rounding (Backbone::features is close to, not bitwise, BackboneNet::forward).
    const bool shipped =
        std::abs(before_general.perplexity / shipped_general.perplexity - 1.0) < 1e-3;
    if (!committed || !user_improved || !general_kept || !shipped) {
        std::printf("FAILED:%s%s%s%s\n", committed ? "" : " the update was not committed;",
                    user_improved ? "" : " user top-3 accuracy did not improve;",
                    general_kept ? "" : " general top-3 accuracy collapsed (< 80% of before);",
                    shipped ? "" : " the device's head does not score as the shipped one;");
        return 1;
    }
    std::printf("keyboard: user top-3 %+.1f points, general top-3 %+.1f points\n",
                100.0 * (after_user.top3 - before_user.top3),
                100.0 * (after_general.top3 - before_general.top3));
    return 0;
}
