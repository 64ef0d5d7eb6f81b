// classes.cpp — the Personalizer's open-world calls: add, rename, list and remove classes.
// The classes table is the store's (storage.hpp); the head's columns follow it here.
#include "detail/calibration.hpp"
#include "detail/head.hpp"
#include "detail/personalizer_impl.hpp"
#include "detail/upgrade.hpp"
#include "fp_mode.hpp"

namespace edgetune {

using namespace detail::meta;
using detail::fail;

std::int32_t Personalizer::add_class(std::string_view name) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("Personalizer.add_class", "a regression head");
    std::lock_guard lock(impl_->store_mu);
    const std::int32_t label = impl_->store.add_class(name);
    impl_->live_classes = impl_->store.label_spec().size;
    // The served head gets the class's column now; its prototype comes with the next train().
    auto tensors = impl_->current_head()->tensors();
    const HeadSpec h = impl_->spec();
    grow_classes(tensors, h, h.outputs);
    auto head = impl_->new_head(0);
    head->load(tensors);
    impl_->publish(std::move(head));
    return label;
}

void Personalizer::rename_class(std::int32_t label, std::string_view name) {
    if (!impl_->spec().classifies()) fail("Personalizer.rename_class", "a regression head");
    std::lock_guard lock(impl_->store_mu);
    impl_->store.rename_class(label, name);
}

std::vector<ClassInfo> Personalizer::classes() const {
    if (!impl_->spec().classifies()) fail("Personalizer.classes", "a regression head");
    std::lock_guard lock(impl_->store_mu);
    return impl_->store.classes();
}

TrainReport Personalizer::remove_class(std::int32_t label, const TrainOptions& retrain) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("Personalizer.remove_class", "a regression head");
    detail::validate_train_options(retrain);
    detail::check_unknown(retrain.unknown);
    std::lock_guard train_lock(impl_->train_mu);
    {
        std::lock_guard lock(impl_->store_mu);
        SampleStore& st = impl_->store;
        // One durable transaction: samples, features, the class, shifted labels, a base without
        // the class's column, no trained checkpoint (they hold the class), the retrain owed.
        const std::vector<std::pair<std::string, std::string>> debt{
            {meta_retrain_pending, "forget"}};
        std::shared_ptr<Head> base;
        st.remove_class(label, debt, [&] {
            base = impl_->save_base_without(st, label);
            st.prune_checkpoints(0);
        });
        impl_->live_classes = st.label_spec().size;
        impl_->publish(std::move(base));           // serves no trace of the class meanwhile
        impl_->publish_calibration(std::nullopt);  // its prototypes name the old labels
    }
    return impl_->retrain_owed(retrain);
}

}  // namespace edgetune
