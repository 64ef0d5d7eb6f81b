/* test_capi.c — the C ABI's test suite, in C11 (compiled with -Wall -Wextra -Werror -pedantic):
 * every function of edgetune.h, its success path and each of its error paths (NULL handles and
 * pointers, freed and wrong-kind handles, too-small buffers and structs, wrong widths, NaN,
 * out-of-range labels and tokens, cancelling callbacks).
 *
 * Usage: test_capi BACKBONE_DIR TMP_DIR [sync|async|all]
 *   BACKBONE_DIR holds floats.etb and tokens.etb (make_backbones). "sync" runs the cases that
 *   start no thread (what runs under qemu-user, see DESIGN's build notes), "async" the
 *   background-training cases.
 * Prints its summary in doctest's format, which scripts/count_tests.py counts case by case. */
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgetune.h"

static const char* backbone_dir;
static const char* tmp_dir;
static int case_failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            case_failed = 1;                                                         \
        }                                                                            \
    } while (0)

/* Checks status `got` == ET_OK with *err NULL; on failure prints the engine's message. */
static void expect_ok(et_status got, et_error* err, const char* what, int line) {
    if (got != ET_OK || err != NULL) {
        fprintf(stderr, "test_capi.c:%d: %s: expected ET_OK, got %s: %s\n", line, what,
                et_status_name(got), err ? et_error_message(err) : "(no error object)");
        case_failed = 1;
    }
    et_error_free(err);
}
/* OK(call-with-&err_): the call must succeed. */
#define OK(call)                               \
    do {                                       \
        et_error* err_ = NULL;                 \
        const et_status st_ = (call);          \
        expect_ok(st_, err_, #call, __LINE__); \
    } while (0)

/* Checks that `got` == want, that the error object carries the same code and that its
 * message contains `fragment`; frees the error. */
static void expect_error(et_status got, et_error* err, et_status want, const char* fragment,
                         int line) {
    if (got != want) {
        fprintf(stderr, "test_capi.c:%d: expected %s, got %s (%s)\n", line, et_status_name(want),
                et_status_name(got), err ? et_error_message(err) : "no error object");
        case_failed = 1;
    } else if (err == NULL) {
        fprintf(stderr, "test_capi.c:%d: %s without an error object\n", line, et_status_name(want));
        case_failed = 1;
    } else if (et_error_code(err) != want || strstr(et_error_message(err), fragment) == NULL) {
        fprintf(stderr, "test_capi.c:%d: error %s \"%s\" lacks \"%s\"\n", line,
                et_status_name(et_error_code(err)), et_error_message(err), fragment);
        case_failed = 1;
    }
    et_error_free(err);
}
/* FAILS(status, "fragment", call-with-&err): the call must fail so (err is freed, reset). */
#define FAILS(want, fragment, call)                           \
    do {                                                      \
        const et_status st_ = (call);                         \
        expect_error(st_, err, (want), (fragment), __LINE__); \
        err = NULL;                                           \
    } while (0)

/* ---------------------------------------------------------------------------------------
 * Fixtures */

static char path_buf[4][1024];
static const char* path_in(int slot, const char* dir, const char* name) {
    snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", dir, name);
    return path_buf[slot];
}

/* A fresh database path (the file and its -wal/-shm removed). */
static const char* fresh_db(const char* name) {
    char side[1100];
    const char* p = path_in(0, tmp_dir, name);
    remove(p);
    snprintf(side, sizeof side, "%s-wal", p);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", p);
    remove(side);
    return p;
}

static et_backbone* load_backbone(const char* file) {
    et_backbone* bb = NULL;
    et_error* err = NULL;
    expect_ok(et_backbone_load(path_in(1, backbone_dir, file), &bb, &err), err, file, __LINE__);
    return bb;
}

static unsigned rng_state = 12345u;
static float uniform(void) { /* in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / (float)(1u << 23) - 1.0f;
}

/* n samples per class of 3 classes: a bump of 2 on coordinate c, plus noise of scale 0.3. */
static void clusters(int per_class, float* x, int32_t* labels) {
    int i, c, k;
    for (i = 0; i < per_class; ++i)
        for (c = 0; c < 3; ++c) {
            const int row = i * 3 + c;
            for (k = 0; k < 4; ++k) x[row * 4 + k] = (k == c ? 2.0f : 0.0f) + 0.3f * uniform();
            labels[row] = c;
        }
}

static et_personalizer* open_linear(const char* db, et_backbone* bb, int64_t classes) {
    et_open_options o;
    et_personalizer* p = NULL;
    et_error* err = NULL;
    CHECK(et_open_options_default(&o, sizeof o) == ET_OK);
    o.classes = classes;
    expect_ok(et_open(fresh_db(db), bb, &o, &p, &err), err, "et_open", __LINE__);
    return p;
}

/* A personalizer over `db` holding 3 x per_class clustered samples. */
static et_personalizer* open_with_samples(const char* db, et_backbone* bb, int per_class) {
    float x[3 * 40 * 4];
    int32_t y[3 * 40];
    et_error* err = NULL;
    et_personalizer* p = open_linear(db, bb, 3);
    clusters(per_class, x, y);
    expect_ok(et_add_floats(p, x, (size_t)(3 * per_class), 4, y, NULL, &err), err, "add", __LINE__);
    return p;
}

/* ---------------------------------------------------------------------------------------
 * Cases: errors, versions, defaults */

static void test_versions(void) {
    CHECK(strcmp(et_version(), EXPECTED_VERSION) == 0);
    CHECK(et_abi_version() == ET_ABI_VERSION);
    CHECK(et_abi_version() >= 1);
}

static void test_status_names(void) {
    int s;
    CHECK(strcmp(et_status_name(ET_OK), "ET_OK") == 0);
    CHECK(strcmp(et_status_name(ET_ERR_BUFFER_TOO_SMALL), "ET_ERR_BUFFER_TOO_SMALL") == 0);
    for (s = ET_OK; s <= ET_ERR_INTERNAL; ++s)
        CHECK(strncmp(et_status_name((et_status)s), "ET_", 3) == 0);
    CHECK(strcmp(et_status_name((et_status)999), "ET_ERR_UNKNOWN_STATUS") == 0);
}

static void test_error_objects(void) {
    et_backbone* bb = (et_backbone*)0x1;
    et_error* err = NULL;
    /* No error object wanted: the status alone. */
    CHECK(et_backbone_load(NULL, &bb, NULL) == ET_ERR_INVALID_ARGUMENT);
    CHECK(bb == NULL); /* the out handle is cleared on failure */
    CHECK(et_backbone_load(NULL, &bb, &err) == ET_ERR_INVALID_ARGUMENT);
    CHECK(err != NULL);
    CHECK(et_error_code(err) == ET_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(et_error_message(err), "[et_backbone_load] path is NULL") == 0);
    et_error_free(err);
    et_error_free(err); /* already freed: a no-op */
    CHECK(et_error_code(err) == ET_ERR_BAD_HANDLE);
    CHECK(et_error_message(err) != NULL);
    et_error_free(NULL);
    CHECK(et_error_code(NULL) == ET_ERR_BAD_HANDLE);
    CHECK(strstr(et_error_message(NULL), "not a live error object") != NULL);
    /* A success clears a stale *error. */
    err = (et_error*)0x1;
    CHECK(et_backbone_load(path_in(1, backbone_dir, "floats.etb"), &bb, &err) == ET_OK);
    CHECK(err == NULL);
    et_backbone_free(bb);
}

static void test_backbone_load(void) {
    et_backbone* bb = NULL;
    et_error* err = NULL;
    FILE* f;
    int i;
    FAILS(ET_ERR_INVALID_ARGUMENT, "backbone is NULL", et_backbone_load("x.etb", NULL, &err));
    FAILS(ET_ERR_STORAGE, "no-such-dir", et_backbone_load("/no-such-dir/b.etb", &bb, &err));
    CHECK(bb == NULL);
    f = fopen(path_in(2, tmp_dir, "corrupt.etb"), "wb");
    CHECK(f != NULL);
    for (i = 0; f && i < 300; ++i) fputc((int)(uniform() * 127.0f) + 128, f);
    if (f) fclose(f);
    FAILS(ET_ERR_CORRUPT_DATA, "not an edgetune checkpoint",
          et_backbone_load(path_in(2, tmp_dir, "corrupt.etb"), &bb, &err));
    CHECK(bb == NULL);
    OK(et_backbone_load(path_in(1, backbone_dir, "floats.etb"), &bb, &err_));
    CHECK(bb != NULL);
    et_backbone_free(bb);
    et_backbone_free(bb); /* freed: a no-op */
    et_backbone_free(NULL);
}

static void test_defaults(void) {
    et_open_options o;
    et_train_options t;
    et_train_report r;
    et_info info;
    unsigned char big[sizeof(et_train_options) + 16];
    size_t i;
    CHECK(et_open_options_default(NULL, sizeof o) == ET_ERR_INVALID_ARGUMENT);
    CHECK(et_open_options_default(&o, sizeof o - 1) == ET_ERR_INVALID_ARGUMENT);
    CHECK(et_open_options_default(&o, sizeof o) == ET_OK);
    CHECK(o.struct_size == sizeof o && o.head == ET_HEAD_LINEAR && o.classes == 0);
    CHECK(o.temperature == 0.1f && o.validation_fraction == 0.2f);
    CHECK(o.durability == ET_DURABILITY_NORMAL && o.hidden == NULL && o.hidden_count == 0);
    CHECK(et_train_options_default(NULL, sizeof t) == ET_ERR_INVALID_ARGUMENT);
    CHECK(et_train_options_default(&t, 4) == ET_ERR_INVALID_ARGUMENT);
    CHECK(et_train_options_default(&t, sizeof t) == ET_OK);
    CHECK(t.struct_size == sizeof t && t.epochs == 10 && t.batch == 32);
    CHECK(t.optimizer == ET_OPTIMIZER_ADAM && t.learning_rate == ET_AUTO_LR);
    CHECK(t.balance_classes == -1);
    CHECK(t.replay == ET_REPLAY_ALL && t.tolerance == 0.02f && t.on_progress == NULL);
    CHECK(et_train_report_default(&r, sizeof r) == ET_OK && r.struct_size == sizeof r);
    CHECK(et_train_report_default(&r, 1) == ET_ERR_INVALID_ARGUMENT);
    CHECK(et_info_default(&info, sizeof info) == ET_OK && info.struct_size == sizeof info);
    CHECK(et_info_default(NULL, sizeof info) == ET_ERR_INVALID_ARGUMENT);
    /* A caller built against a newer header (a larger struct): the tail is zeroed. */
    memset(big, 0xAB, sizeof big);
    CHECK(et_train_options_default((et_train_options*)(void*)big, sizeof big) == ET_OK);
    for (i = sizeof(et_train_options); i < sizeof big; ++i) CHECK(big[i] == 0);
}

/* ---------------------------------------------------------------------------------------
 * Cases: open, add, predict, info */

static void test_open_errors(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = (et_personalizer*)0x1;
    et_open_options o;
    et_error* err = NULL;
    const char* db = fresh_db("open.db");
    et_open_options_default(&o, sizeof o);
    o.classes = 3;
    FAILS(ET_ERR_INVALID_ARGUMENT, "personalizer is NULL", et_open(db, bb, &o, NULL, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "path is NULL", et_open(NULL, bb, &o, &p, &err));
    CHECK(p == NULL);
    FAILS(ET_ERR_BAD_HANDLE, "backbone is NULL", et_open(db, NULL, &o, &p, &err));
    FAILS(ET_ERR_BAD_HANDLE, "not a live handle",
          et_open(db, (const et_backbone*)(const void*)&o, &o, &p, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "options is NULL", et_open(db, bb, NULL, &p, &err));
    o.struct_size = 8;
    FAILS(ET_ERR_INVALID_ARGUMENT, "options->struct_size 8", et_open(db, bb, &o, &p, &err));
    o.struct_size = sizeof o;
    o.classes = 0;
    FAILS(ET_ERR_INVALID_ARGUMENT, "classes = 0", et_open(db, bb, &o, &p, &err));
    o.classes = 3;
    o.head = 42;
    FAILS(ET_ERR_INVALID_ARGUMENT, "head 42", et_open(db, bb, &o, &p, &err));
    o.head = ET_HEAD_MLP;
    o.hidden_count = 2;
    FAILS(ET_ERR_INVALID_ARGUMENT, "hidden is NULL", et_open(db, bb, &o, &p, &err));
    o.head = ET_HEAD_LINEAR;
    o.hidden_count = 0;
    o.durability = 7;
    FAILS(ET_ERR_INVALID_ARGUMENT, "durability 7", et_open(db, bb, &o, &p, &err));
    o.durability = ET_DURABILITY_NORMAL;
    o.validation_fraction = 2.0f;
    FAILS(ET_ERR_INVALID_ARGUMENT, "validation_fraction", et_open(db, bb, &o, &p, &err));
    o.validation_fraction = 0.2f;
    FAILS(ET_ERR_STORAGE, "cannot create the file", et_open("/no-such-dir/x.db", bb, &o, &p, &err));
    /* Created with 3 classes; reopening with 4 is refused and the file stays usable. */
    OK(et_open(db, bb, &o, &p, &err_));
    et_close(p);
    o.classes = 4;
    FAILS(ET_ERR_INVALID_ARGUMENT, "the store was created for float_vector[4] -> classes(3)",
          et_open(db, bb, &o, &p, &err));
    o.classes = 3;
    OK(et_open(db, bb, &o, &p, &err_));
    et_close(p);
    et_close(p); /* closed: a no-op */
    et_close(NULL);
    /* Another backbone: refused unless upgrade_backbone says so. */
    et_backbone* v2 = load_backbone("floats_v2.etb");
    o.upgrade_backbone = 2;
    FAILS(ET_ERR_INVALID_ARGUMENT, "upgrade_backbone 2 is not 0 or 1",
          et_open(db, v2, &o, &p, &err));
    o.upgrade_backbone = 0;
    FAILS(ET_ERR_INVALID_ARGUMENT, "set upgrade_backbone", et_open(db, v2, &o, &p, &err));
    o.upgrade_backbone = 1;
    OK(et_open(db, v2, &o, &p, &err_));
    et_close(p);
    o.upgrade_backbone = 0;
    OK(et_open(db, v2, &o, &p, &err_)); /* upgraded: v2 is now the database's backbone */
    et_close(p);
    et_backbone_free(v2);
    /* initial_head_path: a file that is not a head, one that does not exist. */
    o.initial_head_path = path_in(1, backbone_dir, "floats.etb");
    FAILS(ET_ERR_CORRUPT_DATA, "not a head", et_open(fresh_db("initial-head.db"), bb, &o, &p, &err));
    o.initial_head_path = "/no-such-dir/head.etk";
    FAILS(ET_ERR_STORAGE, "/no-such-dir/head.etk", et_open(fresh_db("initial-head.db"), bb, &o, &p, &err));
    o.initial_head_path = NULL;
    et_backbone_free(bb);
}

static void test_heads_and_durability(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = NULL;
    et_open_options o;
    et_info info;
    const int64_t hidden[1] = {8};
    float x[3 * 10 * 4];
    int32_t y[3 * 10];
    et_error* err = NULL;
    et_open_options_default(&o, sizeof o);
    o.classes = 3;
    o.head = ET_HEAD_MLP;
    o.hidden = hidden;
    o.hidden_count = 1;
    o.durability = ET_DURABILITY_FULL;
    OK(et_open(fresh_db("mlp.db"), bb, &o, &p, &err_));
    clusters(10, x, y);
    OK(et_add_floats(p, x, 30, 4, y, NULL, &err_));
    OK(et_train(p, NULL, NULL, &err_));
    et_info_default(&info, sizeof info);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.head == ET_HEAD_MLP && info.samples == 30);
    et_close(p);
    o.head = ET_HEAD_PROTOTYPE;
    o.hidden = NULL;
    o.hidden_count = 0;
    o.temperature = 100.0f;
    OK(et_open(fresh_db("proto.db"), bb, &o, &p, &err_));
    OK(et_get_info(p, &info, &err_));
    CHECK(info.head == ET_HEAD_PROTOTYPE);
    et_close(p);
    (void)err;
    et_backbone_free(bb);
}

static void test_add_errors(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_linear("add.db", bb, 3);
    et_personalizer* closed = open_linear("add_closed.db", bb, 3);
    float x[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    int32_t y[2] = {0, 1};
    int32_t tok[3] = {1, 2, 3};
    int64_t ids[2] = {0, 0};
    et_info info;
    et_error* err = NULL;
    et_close(closed);
    FAILS(ET_ERR_BAD_HANDLE, "personalizer is NULL", et_add_floats(NULL, x, 2, 4, y, ids, &err));
    FAILS(ET_ERR_BAD_HANDLE, "freed already", et_add_floats(closed, x, 2, 4, y, ids, &err));
    FAILS(ET_ERR_BAD_HANDLE, "not a live handle",
          et_add_floats((et_personalizer*)(void*)bb, x, 2, 4, y, ids, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "data is NULL", et_add_floats(p, NULL, 2, 4, y, ids, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "labels is NULL", et_add_floats(p, x, 2, 4, NULL, ids, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "rows must be > 0", et_add_floats(p, x, 0, 4, y, ids, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "width 3 does not match the backbone's input width 4",
          et_add_floats(p, x, 2, 3, y, ids, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "use the *_floats function",
          et_add_tokens(p, tok, 1, 3, y, ids, &err));
    x[5] = NAN;
    FAILS(ET_ERR_INVALID_ARGUMENT, "row 1 column 1 is nan",
          et_add_floats(p, x, 2, 4, y, ids, &err));
    x[5] = INFINITY;
    FAILS(ET_ERR_INVALID_ARGUMENT, "row 1 column 1 is inf",
          et_add_floats(p, x, 2, 4, y, ids, &err));
    x[5] = 1.0f;
    y[1] = 3;
    FAILS(ET_ERR_INVALID_ARGUMENT, "samples[1].label 3 out of range for 3 classes",
          et_add_floats(p, x, 2, 4, y, ids, &err));
    y[1] = -1;
    FAILS(ET_ERR_INVALID_ARGUMENT, "label -1 out of range",
          et_add_floats(p, x, 2, 4, y, ids, &err));
    /* Nothing of the rejected batches was stored (all or nothing). */
    et_info_default(&info, sizeof info);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.samples == 0);
    y[1] = 1;
    OK(et_add_floats(p, x, 2, 4, y, ids, &err_));
    CHECK(ids[0] > 0 && ids[1] > ids[0]);
    OK(et_add_floats(p, x, 2, 4, y, NULL, &err_)); /* ids may be NULL */
    OK(et_get_info(p, &info, &err_));
    CHECK(info.samples == 4);
    et_close(p);
    et_backbone_free(bb);
}

static void test_info(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("info.db", bb, 5);
    et_info info;
    int64_t counts[3] = {-1, -1, -1};
    int64_t small[2];
    size_t n = 0;
    et_error* err = NULL;
    et_info_default(&info, sizeof info);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.samples == 15 && info.classes == 3 && info.input_kind == ET_INPUT_FLOATS);
    CHECK(info.input_width == 4 && info.feature_width == 16 && info.head == ET_HEAD_LINEAR);
    FAILS(ET_ERR_INVALID_ARGUMENT, "info is NULL", et_get_info(p, NULL, &err));
    info.struct_size = 4;
    FAILS(ET_ERR_INVALID_ARGUMENT, "info->struct_size 4", et_get_info(p, &info, &err));
    FAILS(ET_ERR_BAD_HANDLE, "personalizer is NULL", et_get_info(NULL, &info, &err));
    OK(et_count_per_class(p, NULL, 0, &n, &err_)); /* size query */
    CHECK(n == 3);
    n = 0;
    FAILS(ET_ERR_BUFFER_TOO_SMALL, "2 entries, 3 needed",
          et_count_per_class(p, small, 2, &n, &err));
    CHECK(n == 3);
    FAILS(ET_ERR_INVALID_ARGUMENT, "count is NULL", et_count_per_class(p, counts, 3, NULL, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "out is NULL", et_count_per_class(p, NULL, 3, &n, &err));
    OK(et_count_per_class(p, counts, 3, &n, &err_));
    CHECK(counts[0] == 5 && counts[1] == 5 && counts[2] == 5);
    et_close(p);
    et_backbone_free(bb);
}

/* ---------------------------------------------------------------------------------------
 * Cases: train, predict, forget */

static int progress_calls;
static int64_t last_step;
static int count_progress(const et_progress* progress, void* user_data) {
    CHECK(user_data == &progress_calls);
    CHECK(progress->struct_size == sizeof(et_progress));
    CHECK(progress->step == last_step + 1 && progress->epoch >= 1 && isfinite(progress->loss));
    last_step = progress->step;
    ++progress_calls;
    return 0;
}

static int cancel_at_3(const et_progress* progress, void* user_data) {
    (void)user_data;
    return progress->step >= 3;
}

/* Fraction of 30 fresh cluster points whose top-1 prediction is their class. */
static double accuracy(et_personalizer* p) {
    float x[30 * 4];
    int32_t y[30];
    et_prediction top[1];
    size_t n = 0;
    int i, right = 0;
    clusters(10, x, y);
    for (i = 0; i < 30; ++i) {
        et_error* err = NULL;
        if (et_predict_floats(p, x + i * 4, 4, 1, top, 1, &n, &err) == ET_OK && n == 1 &&
            top[0].label == y[i])
            ++right;
        et_error_free(err);
    }
    return right / 30.0;
}

static void test_train_and_predict(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("train.db", bb, 20);
    et_train_options t;
    et_train_report r;
    et_prediction top[3];
    size_t n = 0;
    const float q[4] = {0, 0, 2.1f, 0};
    et_train_options_default(&t, sizeof t);
    t.epochs = 30;
    t.learning_rate = 0.05f;
    t.on_progress = count_progress;
    t.user_data = &progress_calls;
    progress_calls = 0;
    last_step = 0;
    et_train_report_default(&r, sizeof r);
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED);
    CHECK(r.steps > 0 && progress_calls == r.steps && last_step == r.steps);
    CHECK(r.epochs == 30 && r.train_samples + r.validation_samples == 60);
    CHECK(r.has_metrics && r.after.accuracy >= 0.9 && r.after.samples == r.validation_samples);
    CHECK(accuracy(p) >= 0.9);
    /* top-3 of a point of class 2: all three classes, best first, probabilities summing to 1 */
    OK(et_predict_floats(p, q, 4, 3, top, 3, &n, &err_));
    CHECK(n == 3 && top[0].label == 2);
    CHECK(top[0].probability >= top[1].probability && top[1].probability >= top[2].probability);
    CHECK(fabs(top[0].probability + top[1].probability + top[2].probability - 1.0) < 1e-4);
    /* Without replay and with nothing new there is nothing to do. */
    et_train_options_default(&t, sizeof t);
    t.replay = ET_REPLAY_NONE;
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_NOTHING_TO_DO && r.steps == 0);
    et_close(p);
    et_backbone_free(bb);
}

static void test_predict_errors(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("predict.db", bb, 5);
    et_prediction top[4];
    size_t n = 0;
    float q[4] = {2, 0, 0, 0};
    const int32_t tok[3] = {1, 2, 3};
    et_error* err = NULL;
    OK(et_predict_floats(p, q, 4, 5, NULL, 0, &n, &err_)); /* size query: min(k, classes) */
    CHECK(n == 3);
    n = 0;
    FAILS(ET_ERR_BUFFER_TOO_SMALL, "out holds 2 predictions, 3 needed",
          et_predict_floats(p, q, 4, 3, top, 2, &n, &err));
    CHECK(n == 3);
    FAILS(ET_ERR_INVALID_ARGUMENT, "out is NULL", et_predict_floats(p, q, 4, 3, NULL, 3, &n, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "count is NULL",
          et_predict_floats(p, q, 4, 3, top, 3, NULL, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "k = 0", et_predict_floats(p, q, 4, 0, top, 3, &n, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "k = -2", et_predict_floats(p, q, 4, -2, top, 3, &n, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "input is NULL",
          et_predict_floats(p, NULL, 4, 1, top, 3, &n, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "width 5", et_predict_floats(p, q, 5, 1, top, 3, &n, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "use the *_floats function",
          et_predict_tokens(p, tok, 3, 1, top, 3, &n, &err));
    FAILS(ET_ERR_BAD_HANDLE, "personalizer is NULL",
          et_predict_floats(NULL, q, 4, 1, top, 3, &n, &err));
    q[2] = NAN;
    FAILS(ET_ERR_INVALID_ARGUMENT, "column 2 is nan",
          et_predict_floats(p, q, 4, 1, top, 3, &n, &err));
    q[2] = 0.0f;
    OK(et_predict_floats(p, q, 4, 1, top, 4, &n, &err_)); /* a larger buffer is fine */
    CHECK(n == 1);
    et_close(p);
    et_backbone_free(bb);
}

static void test_train_errors_and_cancel(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("cancel.db", bb, 20);
    et_prediction top[1];
    size_t n = 0;
    const float q[4] = {2, 0, 0, 0};
    const int32_t top_label[1] = {0};
    et_train_options t;
    et_train_report r;
    et_info info;
    et_error* err = NULL;
    et_train_options_default(&t, sizeof t);
    et_train_report_default(&r, sizeof r);
    FAILS(ET_ERR_BAD_HANDLE, "personalizer is NULL", et_train(NULL, &t, &r, &err));
    t.batch = 0;
    FAILS(ET_ERR_INVALID_ARGUMENT, "batch = 0", et_train(p, &t, &r, &err));
    t.batch = 8;
    t.optimizer = 9;
    FAILS(ET_ERR_INVALID_ARGUMENT, "optimizer 9", et_train(p, &t, &r, &err));
    t.optimizer = ET_OPTIMIZER_SGD;
    t.learning_rate = -1.0f;
    FAILS(ET_ERR_INVALID_ARGUMENT, "lr", et_train(p, &t, &r, &err));
    t.learning_rate = 0.01f;
    t.replay = 12;
    FAILS(ET_ERR_INVALID_ARGUMENT, "replay 12", et_train(p, &t, &r, &err));
    t.replay = ET_REPLAY_RESERVOIR;
    FAILS(ET_ERR_INVALID_ARGUMENT, "replay size", et_train(p, &t, &r, &err));
    t.replay = ET_REPLAY_ALL;
    t.label_smoothing = 1.5f;
    FAILS(ET_ERR_INVALID_ARGUMENT, "label_smoothing", et_train(p, &t, &r, &err));
    t.label_smoothing = 0.0f;
    t.struct_size = 16;
    FAILS(ET_ERR_INVALID_ARGUMENT, "options->struct_size 16", et_train(p, &t, &r, &err));
    t.struct_size = sizeof t;
    r.struct_size = 8;
    FAILS(ET_ERR_INVALID_ARGUMENT, "report->struct_size 8", et_train(p, &t, &r, &err));
    r.struct_size = sizeof r;
    /* None of the refused calls trained (the cancel below counts steps from 0). */
    OK(et_predict_floats(p, q, 4, 1, top, 1, &n, &err_));
    /* A callback returning non-zero cancels after step 3; nothing is committed. */
    t.on_progress = cancel_at_3;
    t.epochs = 50;
    FAILS(ET_ERR_CANCELLED, "cancelled after 3 steps; the last committed head is kept",
          et_train(p, &t, &r, &err));
    CHECK(r.outcome == ET_OUTCOME_CANCELLED && r.steps == 3);
    /* The samples are still new: a full run commits. */
    t.on_progress = NULL;
    t.epochs = 2;
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED || r.outcome == ET_OUTCOME_ROLLED_BACK);
    /* A budget: max_steps stops the run after exactly that many steps. */
    OK(et_add_floats(p, q, 1, 4, top_label, NULL, &err_));
    t.max_steps = 2;
    t.epochs = 10;
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.steps == 2 && strstr(r.reason, "max_steps") != NULL);
    et_info_default(&info, sizeof info);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.samples == 61);
    et_close(p);
    et_backbone_free(bb);
}

static void test_forget(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_linear("forget.db", bb, 3);
    float x[3 * 10 * 4];
    int32_t y[30];
    int64_t ids[30];
    et_train_options t;
    et_train_report r;
    et_info info;
    et_error* err = NULL;
    clusters(10, x, y);
    OK(et_add_floats(p, x, 30, 4, y, ids, &err_));
    et_train_options_default(&t, sizeof t);
    t.epochs = 3;
    OK(et_train(p, &t, NULL, &err_));
    FAILS(ET_ERR_INVALID_ARGUMENT, "ids is NULL with count 2",
          et_forget(p, NULL, 2, NULL, NULL, &err));
    FAILS(ET_ERR_BAD_HANDLE, "personalizer is NULL", et_forget(NULL, ids, 2, NULL, NULL, &err));
    t.batch = -1;
    FAILS(ET_ERR_INVALID_ARGUMENT, "batch = -1", et_forget(p, ids, 2, &t, NULL, &err));
    t.batch = 32;
    /* The failed calls deleted nothing. */
    et_info_default(&info, sizeof info);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.samples == 30);
    et_train_report_default(&r, sizeof r);
    OK(et_forget(p, ids, 3, &t, &r, &err_));
    CHECK(r.retrained_from_base == 1);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.samples == 27);
    OK(et_forget(p, ids, 0, NULL, NULL, &err_)); /* nothing: fine */
    et_close(p);
    et_backbone_free(bb);
}

static void test_tokens(void) {
    et_backbone* bb = load_backbone("tokens.etb");
    et_personalizer* p = open_linear("tokens.db", bb, 2);
    /* class 0: low token ids, class 1: high ones */
    int32_t tok[12 * 3];
    int32_t y[12];
    et_prediction top[2];
    size_t n = 0;
    const float f[4] = {0, 0, 0, 0};
    et_info info;
    int i, k;
    et_error* err = NULL;
    for (i = 0; i < 12; ++i) {
        y[i] = i % 2;
        for (k = 0; k < 3; ++k) tok[i * 3 + k] = (i % 2 ? 15 : 1) + (i + k) % 4;
    }
    OK(et_add_tokens(p, tok, 12, 3, y, NULL, &err_));
    FAILS(ET_ERR_INVALID_ARGUMENT, "length 2 does not match the backbone's sequence length 3",
          et_add_tokens(p, tok, 1, 2, y, NULL, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "tokens is NULL", et_add_tokens(p, NULL, 1, 3, y, NULL, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "use the *_tokens function",
          et_add_floats(p, f, 1, 4, y, NULL, &err));
    tok[1] = 20; /* vocab is 20 */
    FAILS(ET_ERR_INVALID_ARGUMENT, "20", et_add_tokens(p, tok, 1, 3, y, NULL, &err));
    tok[1] = -3;
    FAILS(ET_ERR_INVALID_ARGUMENT, "", et_add_tokens(p, tok, 1, 3, y, NULL, &err));
    tok[1] = 2;
    OK(et_train(p, NULL, NULL, &err_));
    OK(et_predict_tokens(p, tok, 3, 2, top, 2, &n, &err_));
    CHECK(n == 2 && top[0].label != top[1].label);
    FAILS(ET_ERR_INVALID_ARGUMENT, "use the *_tokens function",
          et_predict_floats(p, f, 4, 1, top, 2, &n, &err));
    tok[0] = 99;
    FAILS(ET_ERR_INVALID_ARGUMENT, "99", et_predict_tokens(p, tok, 3, 1, top, 2, &n, &err));
    et_info_default(&info, sizeof info);
    OK(et_get_info(p, &info, &err_));
    CHECK(info.input_kind == ET_INPUT_TOKENS && info.input_width == 3 && info.feature_width == 8);
    CHECK(info.samples == 12 && info.classes == 2);
    et_close(p);
    et_backbone_free(bb);
}

/* ---------------------------------------------------------------------------------------
 * Cases: background training (threads: native runs only) */

/* The run whose callback is running (set once et_train_async has returned its handle). */
static _Atomic(et_training*) current_run;

static int checking_progress(const et_progress* progress, void* user_data) {
    et_training* self = atomic_load(&current_run);
    et_progress seen;
    int32_t done = 1;
    et_error* err = NULL;
    (void)progress;
    (void)user_data;
    /* Calls on the run's own handle from its callback must not deadlock. */
    if (self != NULL) {
        seen.struct_size = sizeof seen;
        expect_ok(et_training_progress(self, &seen, &err), err, "progress in callback", __LINE__);
        err = NULL;
        expect_ok(et_training_done(self, &done, &err), err, "done in callback", __LINE__);
        CHECK(done == 0);
    }
    return 0;
}

static void test_train_async(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("async.db", bb, 40);
    et_training* run = NULL;
    et_train_options t;
    et_train_report r;
    et_progress pr;
    int32_t done = 0;
    et_prediction top[1];
    size_t n = 0;
    const float q[4] = {2, 0, 0, 0};
    et_error* err = NULL;
    et_train_options_default(&t, sizeof t);
    t.epochs = 40;
    t.batch = 4;
    t.on_progress = checking_progress;
    atomic_store(&current_run, NULL);
    FAILS(ET_ERR_INVALID_ARGUMENT, "training is NULL", et_train_async(p, &t, NULL, &err));
    FAILS(ET_ERR_BAD_HANDLE, "personalizer is NULL", et_train_async(NULL, &t, &run, &err));
    t.batch = 0;
    FAILS(ET_ERR_INVALID_ARGUMENT, "batch = 0", et_train_async(p, &t, &run, &err));
    CHECK(run == NULL);
    t.batch = 4;
    OK(et_train_async(p, &t, &run, &err_));
    atomic_store(&current_run, run);
    /* predict stays usable during the run */
    OK(et_predict_floats(p, q, 4, 1, top, 1, &n, &err_));
    CHECK(n == 1);
    pr.struct_size = sizeof pr;
    OK(et_training_progress(run, &pr, &err_));
    CHECK(pr.step >= 0);
    pr.struct_size = 2;
    FAILS(ET_ERR_INVALID_ARGUMENT, "progress->struct_size 2", et_training_progress(run, &pr, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "progress is NULL", et_training_progress(run, NULL, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "done is NULL", et_training_done(run, NULL, &err));
    FAILS(ET_ERR_BAD_HANDLE, "training is NULL", et_training_cancel(NULL, &err));
    FAILS(ET_ERR_BAD_HANDLE, "not a live handle",
          et_training_done((const et_training*)(const void*)p, &done, &err));
    et_train_report_default(&r, sizeof r);
    OK(et_training_wait(run, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED && r.steps > 0);
    OK(et_training_done(run, &done, &err_));
    CHECK(done == 1);
    pr.struct_size = sizeof pr;
    OK(et_training_progress(run, &pr, &err_));
    CHECK(pr.step == r.steps);
    atomic_store(&current_run, NULL);
    FAILS(ET_ERR_BUSY, "already waited", et_training_wait(run, &r, &err));
    et_training_free(run);
    FAILS(ET_ERR_BAD_HANDLE, "freed already", et_training_wait(run, &r, &err));
    et_training_free(run); /* freed: a no-op */
    et_training_free(NULL);
    et_close(p);
    et_backbone_free(bb);
}

static void test_async_cancel_and_close(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("async_cancel.db", bb, 40);
    et_training* run = NULL;
    et_training* orphan = NULL;
    et_train_options t;
    et_train_report r;
    et_error* err = NULL;
    et_train_options_default(&t, sizeof t);
    t.epochs = 100000; /* only a cancel ends it */
    t.batch = 1;
    OK(et_train_async(p, &t, &run, &err_));
    OK(et_training_cancel(run, &err_));
    et_train_report_default(&r, sizeof r);
    FAILS(ET_ERR_CANCELLED, "the last committed head is kept", et_training_wait(run, &r, &err));
    CHECK(r.outcome == ET_OUTCOME_CANCELLED);
    et_training_free(run);
    /* Closing the personalizer cancels and joins a run still going; its handle stays valid. */
    OK(et_train_async(p, &t, &orphan, &err_));
    et_close(p);
    FAILS(ET_ERR_CANCELLED, "cancelled", et_training_wait(orphan, &r, &err));
    et_training_free(orphan);
    /* Freeing a running training cancels and joins it. */
    p = open_with_samples("async_free.db", bb, 40);
    OK(et_train_async(p, &t, &run, &err_));
    et_training_free(run);
    et_close(p);
    et_backbone_free(bb);
}

/* ---------------------------------------------------------------------------------------
 * Runner */

typedef struct {
    const char* name;
    void (*fn)(void);
    int threads; /* starts a thread: native runs only */
} test_case;

static void test_classes_and_verify(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("classes.db", bb, 40);
    et_train_options t;
    et_train_report r;
    et_calibration c;
    et_prediction top[4];
    char name[16];
    size_t n = 0, len = 0;
    int32_t label = -7, accept = -1;
    float score = 0.0f;
    const float q[4] = {0, 2.1f, 0, 0};
    et_error* err = NULL;
    OK(et_class_add(p, "Zoë", &label, &err_));
    CHECK(label == 3);
    FAILS(ET_ERR_INVALID_ARGUMENT, "'Zoë' is taken", et_class_add(p, "Zoë", &label, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "is empty", et_class_add(p, "", &label, &err));
    OK(et_class_name(p, 3, NULL, 0, &len, &err_));
    CHECK(len == 4); /* UTF-8 bytes */
    FAILS(ET_ERR_BUFFER_TOO_SMALL, "5 needed", et_class_name(p, 3, name, 4, &len, &err));
    OK(et_class_name(p, 3, name, sizeof name, &len, &err_));
    CHECK(strcmp(name, "Zoë") == 0);
    OK(et_class_rename(p, 3, "zoe", &err_));
    OK(et_class_name(p, 3, name, sizeof name, &len, &err_));
    CHECK(strcmp(name, "zoe") == 0);
    FAILS(ET_ERR_INVALID_ARGUMENT, "no class with label 9",
          et_class_name(p, 9, name, 16, &len, &err));
    OK(et_predict_floats(p, q, 4, 4, top, 4, &n, &err_));
    CHECK(n == 4); /* the head grew a column */
    /* verify needs a calibration; a FAR outside (0, 1) is refused. */
    FAILS(ET_ERR_INVALID_ARGUMENT, "no calibrated threshold",
          et_verify_floats(p, q, 4, 1, &score, &accept, &err));
    et_train_options_default(&t, sizeof t);
    t.epochs = 20;
    t.learning_rate = 0.05f;
    et_train_report_default(&r, sizeof r);
    et_calibration_default(&c, sizeof c);
    FAILS(ET_ERR_INVALID_ARGUMENT, "outside (0, 1)", et_train_calibrated(p, &t, 1.5, &r, &c, &err));
    OK(et_train_calibrated(p, &t, 0.05, &r, &c, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED);
    CHECK(c.calibrated == 1 && c.far <= 0.05 && c.genuine == r.validation_samples);
    OK(et_verify_floats(p, q, 4, 1, &score, &accept, &err_));
    CHECK(accept == 1 && score >= c.threshold);
    OK(et_verify_floats(p, q, 4, 2, &score, &accept, &err_));
    CHECK(accept == 0);
    /* Removing class 0 shifts the others down: "1" is label 0 now. */
    OK(et_class_remove(p, 0, &t, &r, &err_));
    CHECK(r.retrained_from_base == 1);
    OK(et_class_name(p, 0, name, sizeof name, &len, &err_));
    CHECK(strcmp(name, "1") == 0);
    OK(et_predict_floats(p, q, 4, 3, top, 3, &n, &err_));
    CHECK(n == 3 && top[0].label == 0);
    FAILS(ET_ERR_INVALID_ARGUMENT, "no class with label 3",
          et_class_remove(p, 3, NULL, NULL, &err));
    et_close(p);
    et_backbone_free(bb);
}

/* Options and reports of ABI 1's size are still taken: appended fields keep their defaults
 * and are not written. */
static void test_abi1_sizes(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("abi1.db", bb, 5);
    const size_t options_abi1 = offsetof(et_train_options, optimizer_start);
    const size_t report_abi1 = offsetof(et_train_report, resumed);
    et_train_options t;
    et_train_report r;
    et_error* err = NULL;
    CHECK(et_train_options_default(&t, options_abi1 - 1) == ET_ERR_INVALID_ARGUMENT);
    CHECK(et_train_options_default(&t, options_abi1) == ET_OK && t.epochs == 10);
    memset(&r, 0xAB, sizeof r);
    CHECK(et_train_report_default(&r, report_abi1) == ET_OK);
    CHECK(r.resumed == (int32_t)0xABABABAB);
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED && r.resumed == (int32_t)0xABABABAB);
    r.struct_size = report_abi1 - 1;
    FAILS(ET_ERR_INVALID_ARGUMENT, "report->struct_size", et_train(p, &t, &r, &err));
    et_close(p);
    et_backbone_free(bb);
}

static int cancel_at_5(const et_progress* progress, void* user_data) {
    (void)user_data;
    return progress->step >= 5;
}

/* optimizer_start, from_base and resume_every (personalize.hpp TrainOptions). */
static void test_train_choices(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer *p, *ref;
    et_train_options t;
    et_train_report r;
    et_prediction a[3], b[3];
    size_t na = 0, nb = 0;
    const float q[4] = {0.5f, 0.4f, 0.3f, 0};
    et_error* err = NULL;
    rng_state = 777u;
    p = open_with_samples("resume.db", bb, 10);
    rng_state = 777u;
    ref = open_with_samples("resume-ref.db", bb, 10);
    et_train_options_default(&t, sizeof t);
    et_train_report_default(&r, sizeof r);
    t.epochs = 4;
    t.batch = 4;
    t.learning_rate = 0.02f;
    t.tolerance = 1.0f;
    t.resume_every = 2;
    OK(et_train(ref, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED && r.resumed == 0);
    /* Cancelled at step 5, then resumed: the same head as the uninterrupted run. */
    t.on_progress = cancel_at_5;
    FAILS(ET_ERR_CANCELLED, "cancelled", et_train(p, &t, &r, &err));
    CHECK(r.outcome == ET_OUTCOME_CANCELLED && r.steps == 5);
    t.on_progress = NULL;
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED && r.resumed == 1);
    OK(et_predict_floats(p, q, 4, 3, a, 3, &na, &err_));
    OK(et_predict_floats(ref, q, 4, 3, b, 3, &nb, &err_));
    CHECK(na == 3 && nb == 3 && memcmp(a, b, sizeof a) == 0);
    /* A fresh optimizer and a restart from base are taken; a bad choice is refused. */
    t.optimizer_start = ET_OPTIMIZER_FRESH;
    t.replay = ET_REPLAY_ALL;
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED && r.retrained_from_base == 0);
    t.from_base = 1;
    OK(et_train(p, &t, &r, &err_));
    CHECK(r.outcome == ET_OUTCOME_COMMITTED && r.retrained_from_base == 1);
    t.optimizer_start = 7;
    FAILS(ET_ERR_INVALID_ARGUMENT, "optimizer_start 7", et_train(p, &t, &r, &err));
    t.optimizer_start = ET_OPTIMIZER_CONTINUE;
    t.resume_every = -1;
    FAILS(ET_ERR_INVALID_ARGUMENT, "resume_every", et_train(p, &t, &r, &err));
    et_close(p);
    et_close(ref);
    et_backbone_free(bb);
}

/* et_evaluate_floats: top-k and per-class accuracy in one call; a cosine prototype head. */
static void test_evaluate(void) {
    et_backbone* bb = load_backbone("floats.etb");
    et_personalizer* p = open_with_samples("evaluate.db", bb, 10);
    et_open_options o;
    et_personalizer* c = NULL;
    et_info info;
    et_train_options t;
    et_evaluation e;
    double acc[3];
    int64_t per[3];
    float x[30 * 4];
    int32_t y[30];
    et_error* err = NULL;
    clusters(10, x, y);
    et_train_options_default(&t, sizeof t);
    t.epochs = 30;
    t.learning_rate = 0.05f;
    OK(et_train(p, &t, NULL, &err_));
    CHECK(et_evaluation_default(&e, sizeof e) == ET_OK);
    OK(et_evaluate_floats(p, x, 30, 4, y, 1, &e, acc, per, 3, &err_));
    CHECK(e.k == 1 && e.metrics.samples == 30 && e.top_k_accuracy == e.metrics.accuracy);
    CHECK(per[0] == 10 && per[1] == 10 && per[2] == 10);
    CHECK(fabs((acc[0] + acc[1] + acc[2]) / 3.0 - e.metrics.balanced_accuracy) < 1e-12);
    OK(et_evaluate_floats(p, x, 30, 4, y, 3, &e, NULL, NULL, 0, &err_));
    CHECK(e.k == 3 && e.top_k_accuracy == 1.0);
    FAILS(ET_ERR_INVALID_ARGUMENT, "capacity 2",
          et_evaluate_floats(p, x, 30, 4, y, 1, &e, acc, NULL, 2, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "k = 0",
          et_evaluate_floats(p, x, 30, 4, y, 0, &e, NULL, NULL, 0, &err));
    FAILS(ET_ERR_INVALID_ARGUMENT, "evaluation is NULL",
          et_evaluate_floats(p, x, 30, 4, y, 1, NULL, NULL, NULL, 0, &err));
    /* Cosine prototypes enroll with epochs = 0 and classify the clusters. */
    et_open_options_default(&o, sizeof o);
    o.classes = 3;
    o.head = ET_HEAD_COSINE_PROTOTYPE;
    OK(et_open(fresh_db("cosine.db"), bb, &o, &c, &err_));
    OK(et_add_floats(c, x, 30, 4, y, NULL, &err_));
    t.epochs = 0;
    OK(et_train(c, &t, NULL, &err_));
    et_info_default(&info, sizeof info);
    OK(et_get_info(c, &info, &err_));
    CHECK(info.head == ET_HEAD_COSINE_PROTOTYPE);
    OK(et_evaluate_floats(c, x, 30, 4, y, 1, &e, NULL, NULL, 0, &err_));
    CHECK(e.metrics.accuracy >= 0.9);
    et_close(c);
    et_close(p);
    et_backbone_free(bb);
}

int main(int argc, char** argv) {
    static const test_case cases[] = {
        {"versions", test_versions, 0},
        {"status_names", test_status_names, 0},
        {"error_objects", test_error_objects, 0},
        {"backbone_load", test_backbone_load, 0},
        {"defaults", test_defaults, 0},
        {"open_errors", test_open_errors, 0},
        {"heads_and_durability", test_heads_and_durability, 0},
        {"add_errors", test_add_errors, 0},
        {"info", test_info, 0},
        {"train_and_predict", test_train_and_predict, 0},
        {"predict_errors", test_predict_errors, 0},
        {"train_errors_and_cancel", test_train_errors_and_cancel, 0},
        {"forget", test_forget, 0},
        {"tokens", test_tokens, 0},
        {"classes_and_verify", test_classes_and_verify, 0},
        {"abi1_sizes", test_abi1_sizes, 0},
        {"train_choices", test_train_choices, 0},
        {"evaluate", test_evaluate, 0},
        {"train_async", test_train_async, 1},
        {"async_cancel_and_close", test_async_cancel_and_close, 1},
    };
    const char* which = argc > 3 ? argv[3] : "all";
    size_t i;
    int passed = 0, failed = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: test_capi BACKBONE_DIR TMP_DIR [sync|async|all]\n");
        return 2;
    }
    backbone_dir = argv[1];
    tmp_dir = argv[2];
    for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        if ((strcmp(which, "sync") == 0 && cases[i].threads) ||
            (strcmp(which, "async") == 0 && !cases[i].threads))
            continue;
        case_failed = 0;
        cases[i].fn();
        printf("%s: %s\n", case_failed ? "FAILED" : "ok", cases[i].name);
        if (case_failed)
            ++failed;
        else
            ++passed;
    }
    printf("[doctest] test cases: %d | %d passed | %d failed |\n", passed + failed, passed, failed);
    return failed ? 1 : 0;
}
