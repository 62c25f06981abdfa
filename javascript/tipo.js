// TIPO extension: client-side helpers (loaded by the WebUI from javascript/).

// The "reuse" button next to the TIPO seed: the TIPO seed recorded in the infotext of the image selected in the
// gallery (the first image when none is selected). Returns the current value when there is none.
function tipoReuseSeed(tabname, current) {
    const box = gradioApp().querySelector(`#generation_info_${tabname} textarea`);
    if (!box || !box.value) return current;
    let info;
    try {
        info = JSON.parse(box.value);
    } catch (e) {
        return current;
    }
    let index = typeof selected_gallery_index === "function" ? selected_gallery_index() : -1;
    const infotexts = info.infotexts || [];
    if (index < 0 || index >= infotexts.length) index = info.index_of_first_image || 0;
    const match = /TIPO Parameters: "((?:\\.|[^\\"])*)"/.exec(infotexts[index] || "");
    if (!match) return current;
    try {
        const settings = JSON.parse(JSON.parse(`"${match[1]}"`));
        if (Number.isInteger(settings.seed)) return settings.seed;
    } catch (e) {
        // not our JSON: keep the current seed
    }
    return current;
}
