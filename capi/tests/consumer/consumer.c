/* consumer.c — a C program built against an installed edgetune with `pkg-config` alone (the
 * consumer test, consumer_test.sh): enrolls 3 classes, trains, and checks a prediction.
 * Usage: consumer BACKBONE.etb DB */
#include <edgetune.h>
#include <stdio.h>

int main(int argc, char** argv) {
    et_backbone* bb = NULL;
    et_personalizer* p = NULL;
    et_open_options o;
    et_train_options t;
    et_error* err = NULL;
    float x[30 * 4];
    int32_t y[30];
    et_prediction top[1];
    size_t n = 0;
    const float query[4] = {0, 2, 0, 0};
    int i, k, ok;
    if (argc != 3) return 2;
    for (i = 0; i < 30; ++i) { /* class i % 3: a bump on coordinate i % 3, a little jitter */
        y[i] = i % 3;
        for (k = 0; k < 4; ++k) x[i * 4 + k] = (k == i % 3 ? 2.0f : 0.0f) + 0.01f * (float)(i % 7);
    }
    et_open_options_default(&o, sizeof o);
    o.classes = 3;
    et_train_options_default(&t, sizeof t);
    t.epochs = 50;
    t.learning_rate = 0.05f;
    ok = et_backbone_load(argv[1], &bb, &err) == ET_OK &&
         et_open(argv[2], bb, &o, &p, &err) == ET_OK &&
         et_add_floats(p, x, 30, 4, y, NULL, &err) == ET_OK &&
         et_train(p, &t, NULL, &err) == ET_OK &&
         et_predict_floats(p, query, 4, 1, top, 1, &n, &err) == ET_OK;
    if (!ok) {
        fprintf(stderr, "consumer_c: %s\n", et_error_message(err));
        et_error_free(err);
    } else {
        printf("consumer_c: edgetune %s (ABI %u): predicted class %d (p = %.2f)\n", et_version(),
               (unsigned)et_abi_version(), top[0].label, top[0].probability);
        ok = top[0].label == 1;
    }
    et_close(p);
    et_backbone_free(bb);
    return ok ? 0 : 1;
}
