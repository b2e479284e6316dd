// One chat room: a WebSocket to ws/chat/<room>/ (or ws/chat-sync/<room>/).
(function () {
    "use strict";
    const roomName = JSON.parse(document.getElementById("room-name-data").textContent);
    const variant = JSON.parse(document.getElementById("variant-data").textContent);
    const scriptName = JSON.parse(document.getElementById("script-name").textContent);
    const log = document.getElementById("chat-log");
    const input = document.getElementById("chat-message-input");
    const button = document.getElementById("chat-message-submit");
    const status = document.getElementById("status");

    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const route = variant === "sync" ? "/ws/chat-sync/" : "/ws/chat/";
    const url = scheme + window.location.host + scriptName.replace(/\/$/, "") +
        route + encodeURIComponent(roomName) + "/";
    const socket = new WebSocket(url);

    function setStatus(text, cls) {
        status.textContent = text;
        status.className = cls;
    }

    socket.onopen = function () {
        setStatus("connected", "open");
    };
    socket.onmessage = function (e) {
        const data = JSON.parse(e.data);
        if (data.error) {
            log.value += "! " + data.error + "\n";
        } else {
            log.value += data.user + ": " + data.message + "\n";
        }
        log.scrollTop = log.scrollHeight;
    };
    socket.onclose = function (e) {
        setStatus("disconnected (" + e.code + ")", "closed");
    };

    function send() {
        if (input.value && socket.readyState === WebSocket.OPEN) {
            socket.send(JSON.stringify({ message: input.value }));
            input.value = "";
        }
        input.focus();
    }
    input.addEventListener("keyup", function (e) {
        if (e.key === "Enter") {
            send();
        }
    });
    button.addEventListener("click", send);
})();
