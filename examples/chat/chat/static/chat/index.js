// Room picker: typing a name and pressing Enter opens /chat/<name>/.
(function () {
    "use strict";
    const scriptName = JSON.parse(document.getElementById("script-name").textContent);
    document.getElementById("room-form").addEventListener("submit", function (e) {
        e.preventDefault();
        const roomName = document.getElementById("room-name-input").value.trim();
        if (roomName) {
            window.location.pathname = scriptName.replace(/\/$/, "") +
                "/chat/" + encodeURIComponent(roomName) + "/";
        }
    });
})();
